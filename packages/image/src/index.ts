/**
 * @guoce/image — the lazy image format: OCI layer tar -> EROFS metadata image + data blob of unique chunks.
 *
 * ```ts
 * import { convertLayer, createChunkDict } from '@guoce/image'
 * import { createReadStream } from 'node:fs'
 * const dict = createChunkDict()
 * const r = await convertLayer(createReadStream('layer.tar.gz'), { metaPath: 'layer.erofs', blobPath: 'layer.blob', chunkDict: dict })
 * // mount(2): source layer.erofs, type erofs, data `device=layer.blob` (one device= per r.devices entry, in order)
 * ```
 */
export { convertLayer, type ConvertLayerOptions, type LayerResult } from './convert.js'
export { createChunkDict, type ChunkDict, type ChunkStats, type ChunkTableEntry } from './blob.js'
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
