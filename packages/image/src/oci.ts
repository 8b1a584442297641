/**
 * OCI image conversion: `oci:DIR[:TAG]` (OCI image layout) or `docker://REGISTRY/REPO[:TAG][@DIGEST]` (a registry,
 * see registry.ts) in, the same kinds out. Registry images are staged through temporary OCI layouts.
 *
 * The output manifest keeps the source config (with rootfs.diff_ids set to the digests of all its layers, blobs and
 * metadata images alike: none is compressed, and containerd requires one diff id per manifest layer)
 * and has, for each source layer, its data blob (when it stored new chunks) followed by its EROFS metadata
 * image, marked by the media types and annotations documented in doc/FORMAT.md. Blobs of `chunkDict`
 * images that a layer references are added to the manifest (and copied into the target layout).
 */
import { createReadStream } from 'node:fs'
import { copyFile, mkdir, mkdtemp, open, readFile, rename, rm, stat } from 'node:fs/promises'
import { createHash, randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createChunkDict, type ChunkDict } from './blob.js'
import { loadChunkTable, type ChunkCompressionOptions } from './chunks.js'
import { DEFAULT_CHUNK_SIZE } from './constants.js'
import { convertLayer, type LayerResult } from './convert.js'
import { LowerDirs } from './layer.js'
import { CorruptImageError, InvalidImageRefError } from './errors.js'
import { isDockerRef, parseDockerRef, pullImage, pushImage, type DockerRef, type RegistryOptions } from './registry.js'

export const MEDIA_TYPE_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
export const MEDIA_TYPE_INDEX = 'application/vnd.oci.image.index.v1+json'
const MEDIA_TYPE_CONFIG = 'application/vnd.oci.image.config.v1+json'
const MEDIA_TYPE_DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json'
/**
 * An EROFS metadata image with chunk-based inodes and a chunk table appended. Both media types are under
 * `application/vnd.oci.image.layer.`: containerd (images.IsLayerType) hands only such layers to its unpacker,
 * which is what asks a remote snapshotter first (with CRI's labels); any other type it downloads and fails to apply.
 */
export const MEDIA_TYPE_EROFS_META = 'application/vnd.oci.image.layer.guoce.erofs.v1'
/** A data blob: unique chunks, each stored compressed or as is (the chunk table maps its uncompressed view to them). */
export const MEDIA_TYPE_CHUNK_BLOB = 'application/vnd.oci.image.layer.guoce.blob.v1'

export const ANNOTATION_FORMAT = 'io.guoce.image.format'
/** What convertImage writes: chunk table v2 (compressed chunks). 'erofs-chunked-v1' images are still read. */
export const FORMAT_VERSION = 'erofs-chunked-v2'
export const ANNOTATION_CHUNK_SIZE = 'io.guoce.image.chunk-size'
export const ANNOTATION_SOURCE_DIGEST = 'io.guoce.image.source-digest'
export const ANNOTATION_SOURCE_DIFF_ID = 'io.guoce.image.source-diff-id'
/** On a metadata layer: JSON array of the blob digests of its device table, in device order. */
export const ANNOTATION_BLOBS = 'io.guoce.image.blobs'
export const ANNOTATION_REF_NAME = 'org.opencontainers.image.ref.name'

export interface Descriptor {
  mediaType: string
  digest: string
  size: number
  annotations?: Record<string, string>
  platform?: { architecture: string, os: string }
}
export interface Manifest { schemaVersion: 2, mediaType?: string, config: Descriptor, layers: Descriptor[], annotations?: Record<string, string> }
interface Index { schemaVersion: 2, mediaType?: string, manifests: Descriptor[] }

export interface OciRef { dir: string, tag: string | undefined }

export function parseOciRef (ref: string): OciRef {
  if (!ref.startsWith('oci:')) throw new InvalidImageRefError(`${JSON.stringify(ref)}: only oci:DIR[:TAG] references are supported`)
  const rest = ref.slice(4)
  const colon = rest.lastIndexOf(':')
  if (colon > 0 && !rest.slice(colon + 1).includes('/')) return { dir: rest.slice(0, colon), tag: rest.slice(colon + 1) }
  return { dir: rest, tag: undefined }
}

function blobPath (dir: string, digest: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(digest)
  if (m === null) throw new InvalidImageRefError(`unsupported digest ${JSON.stringify(digest)}`)
  return join(dir, 'blobs', 'sha256', m[1]!)
}

async function readJson<T> (path: string, what: string): Promise<T> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T
  } catch (err) {
    throw new InvalidImageRefError(`${what} at ${path}: ${(err as Error).message}`, { cause: err })
  }
}

async function readIndex (dir: string): Promise<Index> {
  return await readJson<Index>(join(dir, 'index.json'), 'OCI index')
}

/** Resolves a reference to its manifest (following one level of image index, preferring linux/amd64). */
export async function readManifest (ref: OciRef): Promise<{ manifest: Manifest, descriptor: Descriptor }> {
  const index = await readIndex(ref.dir)
  const candidates = index.manifests.filter(d => ref.tag === undefined || d.annotations?.[ANNOTATION_REF_NAME] === ref.tag)
  if (candidates.length !== 1) throw new InvalidImageRefError(`oci:${ref.dir}${ref.tag !== undefined ? ':' + ref.tag : ''}: ${candidates.length} matching manifests`)
  let descriptor = candidates[0]!
  let doc = await readJson<Manifest | Index>(blobPath(ref.dir, descriptor.digest), 'manifest')
  if ('manifests' in doc) {
    const pick = doc.manifests.find(d => d.platform?.os === 'linux' && d.platform.architecture === 'amd64') ?? doc.manifests[0]
    if (pick === undefined) throw new InvalidImageRefError('empty image index')
    descriptor = pick
    doc = await readJson<Manifest>(blobPath(ref.dir, descriptor.digest), 'manifest')
  }
  if (!('layers' in doc)) throw new InvalidImageRefError('not an image manifest')
  return { manifest: doc, descriptor }
}

async function writeAtomic (path: string, data: string | Buffer): Promise<void> {
  const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`
  const fh = await open(tmp, 'wx')
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await rename(tmp, path)
}

async function putBlob (dir: string, data: Buffer): Promise<Descriptor & { mediaType: '' }> {
  const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`
  const p = blobPath(dir, digest)
  if (!await exists(p)) await writeAtomic(p, data)
  return { mediaType: '', digest, size: data.length }
}

/** Makes the renames and creations in a directory durable. */
async function syncDir (dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try { await fh.sync() } finally { await fh.close() }
}

async function exists (p: string): Promise<boolean> {
  return await stat(p).then(() => true, () => false)
}

/** Adds every chunk of a converted metadata image to a chunk dictionary. */
export async function addToChunkDict (dict: ChunkDict, metaPath: string): Promise<void> {
  const { reader, table } = await loadChunkTable(metaPath)
  const ordinal = reader.sb.devices.map((d, i) => {
    const j = dict.blobs.findIndex(b => b.digest === d.tag)
    return j === -1 ? dict.blobs.push({ digest: d.tag, blocks: d.blocks, storedSize: table.storedSizes![i]! }) : j + 1
  })
  for (const e of table.entries) {
    const hex = e.digest.toString('hex')
    if (!dict.chunks.has(hex)) {
      dict.chunks.set(hex, { blob: ordinal[e.device - 1]!, blkaddr: e.blkaddr, length: e.length, digest: e.digest, compression: e.compression, storedOffset: e.storedOffset, storedLength: e.storedLength })
    }
  }
}

export interface ConvertImageOptions {
  chunkSize?: number
  /** How chunks are stored. @default 'zstd' */
  compression?: ChunkCompressionOptions['compression']
  /** zstd level. @default DEFAULT_ZSTD_LEVEL */
  compressionLevel?: number
  /** Converted images (oci:DIR[:TAG] or docker://...) whose chunks are referenced instead of stored again. */
  chunkDict?: string[]
  maxLayerSize?: number
  /** Chunks a start-up reads (ConvertLayerOptions.hotChunks), for every layer. */
  hotChunks?: ReadonlyMap<string, ReadonlySet<number>>
  signal?: AbortSignal
  /** docker:// refs: use http, not https (default: only for 127.0.0.1, ::1 and localhost). */
  plainHttp?: boolean
  /** docker:// refs: `user:pass` for token realms and Basic challenges (default: env GUOCE_REGISTRY_AUTH). */
  registryAuth?: string
  /** Where docker:// images are staged as OCI layouts (default: the OS temp dir). Removed when done. */
  tempDir?: string
}

export interface ConvertImageResult {
  manifestDigest: string
  manifest: Manifest
  layers: LayerResult[]
}

const LAYER_TYPES = new Set([
  'application/vnd.oci.image.layer.v1.tar', 'application/vnd.oci.image.layer.v1.tar+gzip', 'application/vnd.oci.image.layer.v1.tar+zstd',
  'application/vnd.docker.image.rootfs.diff.tar.gzip', 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip'
])

/**
 * Converts an image. See the module comment. docker:// sources (and chunk dictionaries) are pulled into temporary
 * OCI layouts first, with every blob verified; a docker:// target is written to a temporary layout and pushed
 * when the conversion succeeded. Temporary layouts are removed in every case.
 */
export async function convertImage (source: string, target: string, opts: ConvertImageOptions = {}): Promise<ConvertImageResult> {
  if (!isDockerRef(source) && !isDockerRef(target) && !(opts.chunkDict ?? []).some(isDockerRef)) return await convertLayout(source, target, opts)
  // every reference is checked before any network traffic
  const parse = (ref: string): DockerRef | undefined => {
    if (isDockerRef(ref)) return parseDockerRef(ref)
    if (!ref.startsWith('oci:')) throw new InvalidImageRefError(`${JSON.stringify(ref)}: expected oci:DIR[:TAG] or docker://REGISTRY/REPO[:TAG][@DIGEST]`)
    parseOciRef(ref)
    return undefined
  }
  const srcD = parse(source)
  const dstD = parse(target)
  const dictD = (opts.chunkDict ?? []).map(parse)
  if (dstD !== undefined && dstD.tag === undefined) throw new InvalidImageRefError(`${target}: a docker:// target needs a tag`)
  const ropts: RegistryOptions = {
    ...(opts.plainHttp !== undefined ? { plainHttp: opts.plainHttp } : {}),
    ...(opts.registryAuth !== undefined ? { auth: opts.registryAuth } : {}),
    ...(opts.signal !== undefined ? { signal: opts.signal } : {})
  }
  const temps: string[] = []
  const stage = async (what: string): Promise<string> => {
    const d = await mkdtemp(join(opts.tempDir ?? tmpdir(), `guoce-${what}-`))
    temps.push(d)
    return d
  }
  try {
    let src = source
    if (srcD !== undefined) {
      const dir = await stage('pull')
      const tag = srcD.tag ?? 'latest'
      await pullImage(srcD, dir, tag, ropts)
      src = `oci:${dir}:${tag}`
    }
    const chunkDict: string[] = []
    for (const [i, d] of dictD.entries()) {
      if (d === undefined) { chunkDict.push(opts.chunkDict![i]!); continue }
      const dir = await stage('dict')
      await pullImage(d, dir, 'dict', ropts)
      chunkDict.push(`oci:${dir}:dict`)
    }
    const dst = dstD !== undefined ? `oci:${await stage('push')}:${dstD.tag!}` : target
    const res = await convertLayout(src, dst, { ...opts, chunkDict })
    if (dstD !== undefined) {
      const r = parseOciRef(dst)
      await pushImage(r.dir, r.tag!, dstD, ropts)
    }
    return res
  } finally {
    for (const d of temps) await rm(d, { recursive: true, force: true })
  }
}

async function convertLayout (source: string, target: string, opts: ConvertImageOptions): Promise<ConvertImageResult> {
  const src = parseOciRef(source)
  const dst = parseOciRef(target)
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE
  const { manifest, descriptor } = await readManifest(src)
  await mkdir(join(dst.dir, 'blobs', 'sha256'), { recursive: true })
  if (!await exists(join(dst.dir, 'oci-layout'))) await writeAtomic(join(dst.dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))

  const dict = createChunkDict()
  const dictBlobSource = new Map<string, string>() // blob digest hex -> path of the blob file
  for (const d of opts.chunkDict ?? []) {
    const ref = parseOciRef(d)
    const { manifest: m } = await readManifest(ref)
    for (const l of m.layers) {
      if (l.mediaType === MEDIA_TYPE_EROFS_META) await addToChunkDict(dict, blobPath(ref.dir, l.digest))
      if (l.mediaType === MEDIA_TYPE_CHUNK_BLOB) dictBlobSource.set(l.digest.slice(7), blobPath(ref.dir, l.digest))
    }
  }

  const config = await readJson<Record<string, unknown> & { rootfs?: { type: string, diff_ids: string[] } }>(blobPath(src.dir, manifest.config.digest), 'config')
  const diffIds = config.rootfs?.diff_ids ?? []
  const layers: Descriptor[] = []
  const results: LayerResult[] = []
  const lowerDirs = new LowerDirs()
  const inManifest = new Set<string>()
  const work = join(dst.dir, `.guoce-convert-${randomBytes(6).toString('hex')}`)
  await mkdir(work)
  try {
    for (const [i, l] of manifest.layers.entries()) {
      if (!LAYER_TYPES.has(l.mediaType)) throw new InvalidImageRefError(`layer ${i}: unsupported media type ${l.mediaType}`)
      const metaTmp = join(work, `${i}.erofs`)
      const blobTmp = join(work, `${i}.blob`)
      const r = await convertLayer(createReadStream(blobPath(src.dir, l.digest), { highWaterMark: 1 << 20 }), {
        metaPath: metaTmp, blobPath: blobTmp, chunkSize, chunkDict: dict, lowerDirs, expectedDigest: l.digest, signal: opts.signal,
        ...(opts.compression !== undefined ? { compression: opts.compression } : {}),
        ...(opts.compressionLevel !== undefined ? { compressionLevel: opts.compressionLevel } : {}),
        ...(opts.maxLayerSize !== undefined ? { maxSize: opts.maxLayerSize } : {}),
        ...(opts.hotChunks !== undefined ? { hotChunks: opts.hotChunks } : {})
      })
      results.push(r)
      if (r.blobDigest !== undefined) {
        await rename(blobTmp, blobPath(dst.dir, `sha256:${r.blobDigest}`))
        dictBlobSource.set(r.blobDigest, blobPath(dst.dir, `sha256:${r.blobDigest}`))
      }
      // every blob this layer's device table names is in the manifest before the metadata layer
      for (const [d, dev] of r.devices.entries()) {
        if (inManifest.has(dev.tag)) continue
        const from = dictBlobSource.get(dev.tag)
        if (from === undefined) throw new CorruptImageError(`layer ${i}: blob ${dev.tag} of its device table is nowhere`)
        const to = blobPath(dst.dir, `sha256:${dev.tag}`)
        if (!await exists(to)) await copyFile(from, to)
        layers.push({ mediaType: MEDIA_TYPE_CHUNK_BLOB, digest: `sha256:${dev.tag}`, size: r.storedSizes[d]!, annotations: { [ANNOTATION_FORMAT]: FORMAT_VERSION } })
        inManifest.add(dev.tag)
      }
      await rename(metaTmp, blobPath(dst.dir, `sha256:${r.metaDigest}`))
      layers.push({
        mediaType: MEDIA_TYPE_EROFS_META,
        digest: `sha256:${r.metaDigest}`,
        size: r.metaSize,
        annotations: {
          [ANNOTATION_FORMAT]: FORMAT_VERSION,
          [ANNOTATION_CHUNK_SIZE]: String(chunkSize),
          [ANNOTATION_SOURCE_DIGEST]: l.digest,
          ...(diffIds[i] !== undefined ? { [ANNOTATION_SOURCE_DIFF_ID]: diffIds[i]! } : {}),
          [ANNOTATION_BLOBS]: JSON.stringify(r.devices.map(d => `sha256:${d.tag}`))
        }
      })
    }
  } finally {
    await rm(work, { recursive: true, force: true })
  }

  await syncDir(join(dst.dir, 'blobs', 'sha256')) // blobs renamed into place are durable before the index names them
  // one diff id per manifest layer (containerd refuses an image whose counts differ); layers are not compressed,
  // so each one's diff id is its digest
  config.rootfs = { type: 'layers', diff_ids: layers.map(l => l.digest) }
  const configDesc = await putBlob(dst.dir, Buffer.from(JSON.stringify(config)))
  const out: Manifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPE_MANIFEST,
    // the output is an OCI manifest: a Docker v2 config (same JSON) is marked as an OCI config
    config: { ...configDesc, mediaType: manifest.config.mediaType === MEDIA_TYPE_DOCKER_CONFIG ? MEDIA_TYPE_CONFIG : manifest.config.mediaType },
    layers,
    annotations: { [ANNOTATION_FORMAT]: FORMAT_VERSION, [ANNOTATION_CHUNK_SIZE]: String(chunkSize), [ANNOTATION_SOURCE_DIGEST]: descriptor.digest }
  }
  const mDesc = await putBlob(dst.dir, Buffer.from(JSON.stringify(out)))
  const index: Index = await exists(join(dst.dir, 'index.json')) ? await readIndex(dst.dir) : { schemaVersion: 2, mediaType: MEDIA_TYPE_INDEX, manifests: [] }
  const tag = dst.tag ?? src.tag ?? 'latest'
  index.manifests = index.manifests.filter(d => d.annotations?.[ANNOTATION_REF_NAME] !== tag)
  index.manifests.push({ mediaType: MEDIA_TYPE_MANIFEST, digest: mDesc.digest, size: mDesc.size, annotations: { [ANNOTATION_REF_NAME]: tag } })
  await syncDir(join(dst.dir, 'blobs', 'sha256'))
  await writeAtomic(join(dst.dir, 'index.json'), JSON.stringify(index))
  await syncDir(dst.dir)
  return { manifestDigest: mDesc.digest, manifest: out, layers: results }
}

/** The files of a converted image's layers: for each metadata layer, its path and its blobs' paths in device order. */
export async function convertedLayers (ref: string): Promise<Array<{ meta: string, blobs: string[], descriptor: Descriptor }>> {
  const r = parseOciRef(ref)
  const { manifest } = await readManifest(r)
  return manifest.layers.filter(l => l.mediaType === MEDIA_TYPE_EROFS_META).map(l => {
    const blobs = JSON.parse(l.annotations?.[ANNOTATION_BLOBS] ?? '[]') as string[]
    return { meta: blobPath(r.dir, l.digest), blobs: blobs.map(b => blobPath(r.dir, b)), descriptor: l }
  })
}

export interface ImageRefInspection {
  manifestDigest: string
  chunkSize: number
  layers: Array<{ digest: string, sourceDigest?: string, blobs: string[], inspection: import('./check.js').ImageInspection }>
  /** Distinct blobs of the image and their bytes. */
  blobs: Array<{ digest: string, size: number }>
  /** Sum of file bytes over all layers (each layer's view) and of blob bytes: their ratio is the dedup. */
  fileBytes: number
  blobBytes: number
}

/** inspectImage() over every layer of a converted image (`guoce image inspect REF`). */
export async function inspectImageRef (ref: string, opts: { files?: boolean } = {}): Promise<ImageRefInspection> {
  const { inspectImage } = await import('./check.js')
  const r = parseOciRef(ref)
  const { manifest, descriptor } = await readManifest(r)
  const layers: ImageRefInspection['layers'] = []
  for (const l of await convertedLayers(ref)) {
    layers.push({
      digest: l.descriptor.digest,
      ...(l.descriptor.annotations?.[ANNOTATION_SOURCE_DIGEST] !== undefined ? { sourceDigest: l.descriptor.annotations[ANNOTATION_SOURCE_DIGEST] } : {}),
      blobs: JSON.parse(l.descriptor.annotations?.[ANNOTATION_BLOBS] ?? '[]') as string[],
      inspection: await inspectImage(l.meta, opts)
    })
  }
  const blobs = manifest.layers.filter(l => l.mediaType === MEDIA_TYPE_CHUNK_BLOB).map(l => ({ digest: l.digest, size: l.size }))
  return {
    manifestDigest: descriptor.digest,
    chunkSize: Number(manifest.annotations?.[ANNOTATION_CHUNK_SIZE] ?? DEFAULT_CHUNK_SIZE),
    layers,
    blobs,
    fileBytes: layers.reduce((s, l) => s + l.inspection.fileBytes, 0),
    blobBytes: blobs.reduce((s, b) => s + b.size, 0)
  }
}

/** checkImage() over every layer of a converted image, blobs included (`guoce image check REF`). Throws on the first fault. */
export async function checkImageRef (ref: string, opts: { signal?: AbortSignal } = {}): Promise<Array<import('./check.js').CheckReport & { digest: string }>> {
  const { checkImage } = await import('./check.js')
  const out = []
  for (const l of await convertedLayers(ref)) {
    const meta = await readFile(l.meta)
    const got = `sha256:${createHash('sha256').update(meta).digest('hex')}`
    if (got !== l.descriptor.digest) throw new CorruptImageError(`metadata layer ${l.descriptor.digest}: bytes hash to ${got}`)
    out.push({ digest: l.descriptor.digest, ...await checkImage(l.meta, { blobs: l.blobs, ...(opts.signal !== undefined ? { signal: opts.signal } : {}) }) })
  }
  return out
}
