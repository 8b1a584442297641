/**
 * @guoce/image — the lazy image format: OCI layer tar -> EROFS metadata image + data blob of unique chunks
 * (doc/FORMAT.md).
 *
 * ```ts
 * import { convertImage, checkImageRef, inspectImageRef, mountImage, convertLayer, createChunkDict } from '@guoce/image'
 * import * as native from '@guoce/native-mount'
 *
 * await convertImage('oci:/src:v1', 'oci:/dst:v1')                    // guoce image convert
 * await convertImage('docker://127.0.0.1:5000/app:v1', 'docker://127.0.0.1:5000/app:v1-lazy') // registry in and out
 * const info = await inspectImageRef('oci:/dst:v1')                    // guoce image inspect
 * await checkImageRef('oci:/dst:v1')                                   // guoce image check (throws, naming the fault)
 * const m = await mountImage('oci:/dst:v1', '/mnt/x', { mounter: native, workDir: '/run/guoce/m1' })
 * await m.unmount()
 *
 * // one layer, streaming, with a chunk dictionary shared by the layers of an image:
 * const dict = createChunkDict()
 * const r = await convertLayer(createReadStream('layer.tar.gz'), { metaPath: 'l.erofs', blobPath: 'l.blob', chunkDict: dict })
 * // the blob stores compressed chunks; the kernel reads its uncompressed view (what the device table describes):
 * await materializeBlob('l.erofs', 1, 'l.blob', 'l.view')           // or a FUSE file serving decodeChunk() results
 * // mount(2): source l.erofs, type erofs, data `device=VIEW` for each of r.devices, in order
 * ```
 * A ChunkDict must not be shared by conversions running at the same time (each adds its blob when it ends).
 */
export { convertLayer, type ConvertLayerOptions, type LayerResult } from './convert.js'
export { fileChunks, touchedFileChunks, hotChunks, type FileChunkAddress } from './file-chunks.js'
export { createChunkDict, type ChunkDict, type ChunkStats, type DictBlob, type DictChunk, type StoredExtent } from './blob.js'
export * from './chunks.js'
export { writeErofs, type WriteErofsOptions, type ErofsDevice, type ErofsImageInfo } from './erofs/writer.js'
export { checkImage, inspectImage, type CheckImageOptions, type CheckReport, type ImageInspection, type InspectFile } from './check.js'
export { ErofsReader, type ErofsInode, type ErofsSuper, type ErofsDirent } from './erofs/reader.js'
export * from './tree.js'
export { LowerDirs, normalizePath } from './layer.js'
export * from './errors.js'
export * from './constants.js'
export {
  convertImage, convertedLayers, addToChunkDict, parseOciRef, readManifest, inspectImageRef, checkImageRef,
  MEDIA_TYPE_EROFS_META, MEDIA_TYPE_CHUNK_BLOB, ANNOTATION_FORMAT, ANNOTATION_CHUNK_SIZE, ANNOTATION_SOURCE_DIGEST,
  ANNOTATION_SOURCE_DIFF_ID, ANNOTATION_BLOBS, FORMAT_VERSION,
  type ConvertImageOptions, type ConvertImageResult, type ImageRefInspection, type Manifest, type Descriptor, type OciRef
} from './oci.js'
export {
  RegistryClient, parseDockerRef, formatDockerRef, isDockerRef, parseChallenge, pullImage, pushImage,
  MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MAX_MANIFEST_SIZE, MAX_TOKEN_RESPONSE_BYTES, type DockerRef, type RegistryOptions
} from './registry.js'
export { mountImage, mountLayer, mountLayers, materializeLayers, type Mounter, type MountImageOptions, type MountedImage } from './mount.js'
