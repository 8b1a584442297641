/**
 * `guoce get oci://REGISTRY/REPO:TAG -O DIR`: model files stored as an OCI artifact (a layer per file,
 * titled by org.opencontainers.image.title, as ORAS pushes them) in a real docker-registry, through two
 * daemons of one cluster.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { sha, startCluster, startRegistry, runGuoce, stopAll, safetensors, type Cluster, type Registry } from '@guoce/testkit'

let cluster: Cluster
let registry: Registry
let dir: string

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'guoce-oci-artifact-'))
  registry = await startRegistry(join(dir, 'registry'))
  cluster = await startCluster({ daemons: 2 })
})
afterAll(async () => {
  await cluster?.close()
  await registry?.stop()
  await stopAll()
  if (dir != null) await rm(dir, { recursive: true, force: true })
})

const digestOf = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

/** push one blob (monolithic upload) */
async function pushBlob (repo: string, b: Buffer): Promise<string> {
  const d = digestOf(b)
  const start = await fetch(`http://${registry.host}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: { 'content-length': '0' } })
  expect(start.status).toBe(202)
  const loc = new URL(start.headers.get('location')!, `http://${registry.host}`)
  loc.searchParams.set('digest', d)
  const put = await fetch(loc, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: b })
  expect(put.status).toBe(201)
  return d
}

/** an artifact of `files` (title -> bytes); `layers` rewrites the layer descriptors (hostile manifests) */
async function pushArtifact (repo: string, tag: string, files: Record<string, Buffer>, layers = (l: any[]): any[] => l): Promise<void> {
  const config = Buffer.from('{}')
  const cfg = await pushBlob(repo, config)
  const descs = []
  for (const [title, b] of Object.entries(files)) descs.push({ mediaType: 'application/octet-stream', digest: await pushBlob(repo, b), size: b.length, annotations: { 'org.opencontainers.image.title': title } })
  const manifest = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', artifactType: 'application/vnd.guoce.model.v1', config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: cfg, size: config.length }, layers: layers(descs) }
  const res = await fetch(`http://${registry.host}/v2/${repo}/manifests/${tag}`, { method: 'PUT', headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, body: JSON.stringify(manifest) })
  expect(res.status, await res.text()).toBe(201)
}

const get = async (ref: string, out: string, daemon: number): Promise<{ code: number | null, stderr: string, lines: any[] }> => {
  const r = await runGuoce(['get', ref, '-O', out, '--daemon', cluster.daemons[daemon]!.api, '--json'])
  return { ...r, lines: r.stdout.trim().split('\n').filter(l => l.startsWith('{')).map(l => JSON.parse(l)) }
}

describe('guoce get oci://', () => {
  it('every layer lands at its title, byte-identical; the second daemon gets them from the swarm', async () => {
    const files = {
      'model.safetensors': safetensors({ w: [512, 1024] }),
      'config.json': Buffer.from('{"hidden_size": 1024}'),
      'tokenizer/tokenizer.json': Buffer.from(JSON.stringify({ v: randomBytes(8).toString('hex') }))
    }
    await pushArtifact('models/tiny', 'v1', files)
    for (const d of [0, 1]) {
      const out = join(dir, `out-${d}`)
      const r = await get(`oci://${registry.host}/models/tiny:v1`, out, d)
      expect(r.code, r.stderr).toBe(0)
      for (const [p, b] of Object.entries(files)) expect(sha(await readFile(join(out, p))), p).toBe(sha(b))
      const perFile = r.lines.filter(l => l.event === 'file')
      expect(perFile).toHaveLength(3)
      // the second daemon: every piece from a peer, none from the registry
      if (d === 1) expect(perFile.reduce((n, l) => n + l.piecesFromSource, 0)).toBe(0)
    }
  })

  it('hostile manifests (a title out of DIR or absolute, no title, one title twice) are refused with a clear error, nothing written', async () => {
    const files = { 'a.bin': randomBytes(1000) }
    const cases: Array<[string, (l: any[]) => any[], RegExp]> = [
      ['escape', l => l.map(x => ({ ...x, annotations: { 'org.opencontainers.image.title': '../../escape.bin' } })), /unsafe path/],
      ['absolute', l => l.map(x => ({ ...x, annotations: { 'org.opencontainers.image.title': '/etc/x' } })), /absolute/],
      ['untitled', l => l.map(x => ({ ...x, annotations: {} })), /no org.opencontainers.image.title/],
      ['twice', l => [...l, ...l], /two layers are titled/]
    ]
    const out = join(dir, 'hostile', 'out')
    for (const [tag, layers, error] of cases) {
      await pushArtifact('models/evil', tag, files, layers)
      const r = await get(`oci://${registry.host}/models/evil:${tag}`, out, 0)
      expect(r.code, tag).toBe(1)
      expect(r.stderr).toMatch(error)
    }
    expect(await readdir(join(dir, 'hostile'))).toEqual(['out'])
    expect(await readdir(out)).toEqual([])
    const missing = await get(`oci://${registry.host}/models/evil:nope`, out, 0)
    expect(missing.code).toBe(1)
    expect(missing.stderr).toMatch(/nope|not found|unknown/i)
  })
})
