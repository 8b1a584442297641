/**
 * A local model hub for tests and benchmarks: the Hugging Face hub's API paths a client uses, over
 * generated repositories, and a second server as its "CDN".
 *   GET /api/models/ORG/REPO/revision/REV[?blobs=true]   {id, sha, private, gated, siblings[{rfilename, size, blobId, lfs?}]}
 *   GET /api/models/ORG/REPO/tree/REV[?recursive=1]      [{type, path, size, oid, lfs?{oid, size}}]
 *   GET|HEAD /ORG/REPO/resolve/REV/PATH                  small files: 200 (ETag = git blob id, X-Repo-Commit);
 *                                                        LFS files: 302 to the CDN with X-Linked-Etag / X-Linked-Size
 *   GET|HEAD CDN /blobs/SHA256                           the LFS bytes (Range honoured, ETag the sha256)
 * REV is a branch name or a commit id. A private repository answers 401 without `Authorization: Bearer
 * <token>`; the CDN records whether a request ever carried an Authorization header. Files at or above
 * `lfsMin` bytes (and every *.safetensors) are LFS. `override` replaces a listing with any JSON (hostile
 * hubs); `corrupt` flips one byte of an LFS blob on its way out of the CDN. Body bytes are counted and
 * share one rate limit (Bucket) across the hub and the CDN.
 */
import { createHash, randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Bucket, send } from './origin.js'

export interface HubRepoInit {
  /** ORG/REPO */
  id: string
  /** branch (or tag) name -> files (path -> bytes) */
  revisions: Record<string, Record<string, Buffer>>
  /** bearer token the repository needs (private) */
  token?: string
}

export interface Hub {
  url: string
  cdnUrl: string
  /** commit id of a branch */
  commit(repo: string, rev: string): string
  addRepo(r: HubRepoInit): void
  /** body bytes of files sent (resolve + CDN), per path and in total */
  sent: Record<string, number>
  totalSent(): number
  /** requests to the CDN that carried an Authorization header */
  cdnAuthorized: number
  /** listing JSON returned instead of the real one, for a repository */
  override: Map<string, unknown>
  /** LFS sha256s whose bytes leave the CDN with one byte flipped */
  corrupt: Set<string>
  setRate(rate: number): void
  close(): Promise<void>
}

const gitBlobId = (b: Buffer): string => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex')
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

/** A safetensors file: 8-byte little-endian header length, JSON header, then the tensors' bytes (random). */
export function safetensors (tensors: Record<string, number[]>): Buffer {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } }
  let off = 0
  for (const [name, shape] of Object.entries(tensors)) {
    const n = shape.reduce((a, b) => a * b, 1) * 4
    header[name] = { dtype: 'F32', shape, data_offsets: [off, off + n] }
    off += n
  }
  let json = Buffer.from(JSON.stringify(header))
  // the header is padded with spaces to 8 bytes, as the format's writers do
  json = Buffer.concat([json, Buffer.alloc((8 - json.length % 8) % 8, 0x20)])
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(BigInt(json.length))
  return Buffer.concat([len, json, randomBytes(off)])
}

/** A small generated model repository: weights (safetensors, LFS), config and tokenizer files, a nested LFS file. */
export function modelFiles (weightsMiB = 4): Record<string, Buffer> {
  const cols = 1024
  const rows = Math.max(1, Math.floor(weightsMiB * 1024 * 1024 / 4 / cols))
  const vocab: Record<string, number> = {}
  for (let i = 0; i < 500; i++) vocab[`tok${i}_${randomBytes(3).toString('hex')}`] = i
  return {
    'model.safetensors': safetensors({ 'embed.weight': [rows, cols], 'norm.weight': [cols] }),
    'config.json': Buffer.from(JSON.stringify({ architectures: ['TinyForCausalLM'], hidden_size: cols, vocab_size: 500, seed: randomBytes(4).toString('hex') }, null, 2)),
    'tokenizer.json': Buffer.from(JSON.stringify({ version: '1.0', model: { type: 'BPE', vocab } })),
    'tokenizer_config.json': Buffer.from(JSON.stringify({ model_max_length: 2048, tokenizer_class: 'PreTrainedTokenizerFast' })),
    'onnx/decoder/model.onnx': randomBytes(1024 * 1024 + 123)
  }
}

interface Rev { commit: string, files: Record<string, Buffer> }
interface Repo { token?: string | undefined, revs: Map<string, Rev> }

export async function startHub (init: { repos?: HubRepoInit[], rate?: number, lfsMin?: number } = {}): Promise<Hub> {
  const bucket = new Bucket(init.rate ?? 0)
  const lfsMin = init.lfsMin ?? 64 * 1024
  const repos = new Map<string, Repo>()
  const blobs = new Map<string, Buffer>()
  const sent: Record<string, number> = {}
  const override = new Map<string, unknown>()
  const corrupt = new Set<string>()
  const isLfs = (path: string, b: Buffer): boolean => b.length >= lfsMin || path.endsWith('.safetensors')
  const state = { cdnAuthorized: 0 }

  const addRepo = (r: HubRepoInit): void => {
    const revs = new Map<string, Rev>()
    for (const [name, files] of Object.entries(r.revisions)) {
      const h = createHash('sha1').update(r.id).update(name)
      for (const [p, b] of Object.entries(files).sort()) { h.update(p).update(gitBlobId(b)); if (isLfs(p, b)) blobs.set(sha256(b), b) }
      const rev = { commit: h.digest('hex'), files }
      revs.set(name, rev)
      revs.set(rev.commit, rev)
    }
    repos.set(r.id, { token: r.token, revs })
  }
  for (const r of init.repos ?? []) addRepo(r)

  const json = (res: ServerResponse, status: number, body: unknown): void => {
    const b = Buffer.from(JSON.stringify(body))
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(b.length) })
    res.end(b)
  }
  /** a body with Range support, counted under `name` */
  const serve = (req: IncomingMessage, res: ServerResponse, name: string, file: Buffer, headers: Record<string, string>): void => {
    let body = file
    const m = typeof req.headers.range === 'string' ? /^bytes=(\d+)-(\d*)$/.exec(req.headers.range) : null
    if (m?.[1] != null) {
      const start = Number(m[1])
      const end = m[2] != null && m[2] !== '' ? Math.min(file.length - 1, Number(m[2])) : file.length - 1
      if (start >= file.length || start > end) { res.writeHead(416, { 'content-range': `bytes */${file.length}` }); res.end(); return }
      body = file.subarray(start, end + 1)
      res.writeHead(206, { ...headers, 'content-length': String(body.length), 'content-range': `bytes ${start}-${end}/${file.length}`, 'accept-ranges': 'bytes' })
    } else {
      res.writeHead(200, { ...headers, 'content-length': String(file.length), 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream' })
    }
    if (req.method === 'HEAD') { res.end(); return }
    void send(res, body, bucket, n => { sent[name] = (sent[name] ?? 0) + n }).then(() => { res.end() })
  }

  const cdn: Server = createServer((req, res) => {
    if (req.headers.authorization != null) state.cdnAuthorized++
    const m = /^\/blobs\/([0-9a-f]{64})(?:\?.*)?$/.exec(req.url ?? '')
    const blob = m?.[1] != null ? blobs.get(m[1]) : undefined
    if (m?.[1] == null || blob == null) { res.writeHead(404); res.end(); return }
    let body = blob
    if (corrupt.has(m[1])) { body = Buffer.from(blob); body[body.length >> 1] = body[body.length >> 1]! ^ 0x01 }
    serve(req, res, `cdn:${m[1]}`, body, { etag: `"${m[1]}"` })
  })
  await new Promise<void>(resolve => cdn.listen(0, '127.0.0.1', resolve))
  const cdnUrl = `http://127.0.0.1:${(cdn.address() as AddressInfo).port}`

  const hub: Server = createServer((req, res) => {
    const [rawPath, query] = (req.url ?? '/').split('?') as [string, string | undefined]
    const segs = rawPath.split('/').slice(1).map(s => decodeURIComponent(s))
    const api = segs[0] === 'api' && segs[1] === 'models'
    const id = api ? `${segs[2]}/${segs[3]}` : `${segs[0]}/${segs[1]}`
    const repo = repos.get(id)
    if (repo == null) { json(res, 404, { error: 'Repository not found' }); return }
    if (repo.token != null && req.headers.authorization !== `Bearer ${repo.token}`) { json(res, 401, { error: 'Invalid credentials' }); return }
    if (api && (segs[4] === 'revision' || segs[4] === 'tree')) {
      // a revision may hold slashes (refs/pr/1): encoded as one segment
      const rev = repo.revs.get(segs[5] ?? '')
      if (rev == null) { json(res, 404, { error: 'Revision not found' }); return }
      if (segs[4] === 'revision' && override.has(id)) { json(res, 200, override.get(id)); return }
      const files = Object.entries(rev.files)
      if (segs[4] === 'tree') {
        json(res, 200, files.map(([p, b]) => ({ type: 'file', path: p, size: b.length, oid: gitBlobId(b), ...(isLfs(p, b) ? { lfs: { oid: sha256(b), size: b.length, pointerSize: 134 } } : {}) })))
        return
      }
      const blobsToo = new URLSearchParams(query ?? '').get('blobs') === 'true'
      json(res, 200, {
        id, modelId: id, sha: rev.commit, private: repo.token != null, gated: false,
        siblings: files.map(([p, b]) => blobsToo ? { rfilename: p, size: b.length, blobId: gitBlobId(b), ...(isLfs(p, b) ? { lfs: { sha256: sha256(b), size: b.length, pointerSize: 134 } } : {}) } : { rfilename: p })
      })
      return
    }
    if (!api && segs[2] === 'resolve') {
      const rev = repo.revs.get(segs[3] ?? '')
      const path = segs.slice(4).join('/')
      const file = rev?.files[path]
      if (rev == null || file == null) { res.writeHead(404, { 'x-error-code': 'EntryNotFound' }); res.end(); return }
      const common = { 'x-repo-commit': rev.commit }
      if (isLfs(path, file)) {
        const digest = sha256(file)
        res.writeHead(302, { ...common, location: `${cdnUrl}/blobs/${digest}?X-Amz-Signature=${randomBytes(8).toString('hex')}`, 'x-linked-etag': `"${digest}"`, 'x-linked-size': String(file.length), 'content-length': '0' })
        res.end()
        return
      }
      serve(req, res, path, file, { ...common, etag: `"${gitBlobId(file)}"` })
      return
    }
    json(res, 404, { error: 'not found' })
  })
  await new Promise<void>(resolve => hub.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${(hub.address() as AddressInfo).port}`
  return {
    url, cdnUrl, sent, override, corrupt,
    get cdnAuthorized () { return state.cdnAuthorized },
    commit: (repo, rev) => repos.get(repo)!.revs.get(rev)!.commit,
    addRepo,
    totalSent: () => Object.values(sent).reduce((a, b) => a + b, 0),
    setRate: (r) => { bucket.rate = r },
    close: async () => {
      for (const s of [hub, cdn]) {
        s.closeAllConnections()
        await new Promise<void>(resolve => s.close(() => { resolve() }))
      }
    }
  }
}
