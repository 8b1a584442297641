/**
 * `guoce get oci://REGISTRY/REPO[:TAG][@sha256:DIGEST] -O DIR`: model data stored as an OCI artifact (as ORAS
 * pushes it: one layer per file, named by its `org.opencontainers.image.title` annotation). The manifest
 * comes from the registry the user named (RegistryClient: bounded, auth challenges answered); each layer is
 * one task through the daemon of `REGISTRY/v2/REPO/blobs/DIGEST`, named by the layer's digest (checked by the
 * daemon), landing at DIR/TITLE through landFiles (hf.ts): the same path checks, temp file + rename, and
 * failure reporting as a model repository.
 */
import { RegistryClient, parseDockerRef, type Manifest } from '@guoce/image'
import { InvalidParametersError, defineError } from '@guoce/interface'
import { parse } from './args.js'
import { fmtBytes } from './get.js'
import { HF_CONCURRENCY, HF_MAX_FILES, HF_MAX_FILE_BYTES, checkPath, landFiles, manyFileOptions } from './hf.js'

/** An artifact's manifest is unusable: an index, no layers, a layer without a title, a bad digest or size, an unsafe title. */
export const ArtifactManifestError = defineError('ArtifactManifestError', 'ERR_ARTIFACT_MANIFEST')

export const TITLE = 'org.opencontainers.image.title'

export const OCI_USAGE = `Usage: guoce get oci://REGISTRY/REPO[:TAG][@sha256:DIGEST] -O DIR [--daemon URL] [--concurrency N] [--timeout 1h] [--stream] [--json]

  Model data stored as an OCI artifact: every layer lands at DIR/<its ${TITLE} annotation>, each
  through the swarm as the task named by the layer's digest, complete and verified.
  --concurrency N      layers fetched at once (default ${HF_CONCURRENCY})
`

export interface ArtifactFile { path: string, digest: string, size: number }

/** The files of an artifact manifest (hostile: every field checked). */
export function artifactFiles (doc: unknown): ArtifactFile[] {
  const m = doc as Partial<Manifest> & { manifests?: unknown }
  if (m == null || typeof m !== 'object') throw new ArtifactManifestError('manifest is not a JSON object')
  if (!Array.isArray(m.layers)) throw new ArtifactManifestError(Array.isArray(m.manifests) ? 'an index, not a manifest: name the artifact\'s manifest by digest' : 'manifest has no layers')
  if (m.layers.length > HF_MAX_FILES) throw new ArtifactManifestError(`manifest names ${m.layers.length} layers, more than ${HF_MAX_FILES}`)
  const seen = new Set<string>()
  return m.layers.map((l, i) => {
    const title = l?.annotations?.[TITLE]
    if (typeof title !== 'string') throw new ArtifactManifestError(`layer ${i} has no ${TITLE} annotation (not a file artifact)`)
    checkPath(title, ArtifactManifestError)
    if (seen.has(title)) throw new ArtifactManifestError(`two layers are titled ${JSON.stringify(title)}`)
    seen.add(title)
    if (typeof l.digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(l.digest)) throw new ArtifactManifestError(`layer ${JSON.stringify(title)}: digest is not sha256:<64 hex>`)
    if (typeof l.size !== 'number' || !Number.isSafeInteger(l.size) || l.size < 0 || l.size > HF_MAX_FILE_BYTES) throw new ArtifactManifestError(`layer ${JSON.stringify(title)}: size out of range`)
    return { path: title, digest: l.digest, size: l.size }
  })
}

export async function getOci (argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, {
    output: { type: 'string', short: 'O' },
    daemon: { type: 'string' },
    concurrency: { type: 'string' },
    timeout: { type: 'string' },
    stream: { type: 'boolean' }
  }, true)
  if (v.help === true) { process.stdout.write(OCI_USAGE); return 0 }
  if (positionals.length !== 1 || !positionals[0]!.startsWith('oci://')) throw new InvalidParametersError('exactly one oci:// reference is required (guoce get oci://REGISTRY/REPO:TAG -O DIR)')
  const ref = parseDockerRef(`docker://${positionals[0]!.slice('oci://'.length)}`)
  const json = v.json === true
  const { concurrency, base, signal, dir } = await manyFileOptions(v)
  const started = Date.now()
  const client = new RegistryClient(ref.registry)
  const m = await client.getManifest(ref.repository, ref.digest ?? ref.tag ?? 'latest')
  let doc: unknown
  try { doc = JSON.parse(m.bytes.toString('utf8')) } catch { throw new ArtifactManifestError('manifest is not JSON') }
  const files = artifactFiles(doc)
  const { bytes, kept } = await landFiles(dir, files.map(f => ({
    path: f.path,
    size: f.size,
    url: `${client.base}/v2/${ref.repository}/blobs/${f.digest}`,
    digest: f.digest,
    verify: async () => {} // the daemon checked the digest (and so the size) before it reported success
  })), { base, signal, json, concurrency, stream: v.stream === true })
  const secs = (Date.now() - started) / 1000
  if (json) process.stdout.write(JSON.stringify({ event: 'done', ref: positionals[0], manifest: m.digest, output: dir, files: files.length, kept, bytes, seconds: secs }) + '\n')
  else process.stderr.write(`${positionals[0]!}: ${files.length} files, ${fmtBytes(bytes)} in ${secs.toFixed(1)} s\n`)
  return 0
}
