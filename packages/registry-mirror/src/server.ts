/*
 * The registry mirror (fastify): the read side of the OCI distribution API in front of an upstream registry.
 * Ownership: the mirror owns three small in-memory caches (manifests by digest, verified; manifests by tag,
 * seconds; the upstream's confirmations per credential and repository, seconds), all bounded. Blob bytes
 * belong to the peer daemon: a blob is a P2P task keyed by its digest, read through the TaskReader, which
 * yields bytes as their pieces are verified and the last ones only once the whole blob matched its digest.
 *
 * Trust: every blob and manifest is served to a client only after the upstream said, to that client's own
 * Authorization (or to none), that it may read it: a HEAD (or the GET itself) per credential and repository,
 * reused for CONFIRM_TTL_MS. A confirmed client then reads the blob's shared task, `{ url, digest }` without
 * any credential (its id is the digest's): what the upstream gives anyone, fetched by the seed anonymously
 * (with the registry's anonymous token where there is a token service). Where the upstream refuses anonymous
 * reads of the repository, a credentialed client reads a task of its own, `{ url, digest, headers:
 * { authorization } }`, whose id includes the credential's hash (credentialHash): only that credential
 * shares it. The Authorization is never logged; it reaches the upstream, and the designated seed of a
 * credential's task.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { createHash } from 'node:crypto'
import { Readable } from 'node:stream'
import { parseDigest } from '@guoce/content'
import { openSource } from '@guoce/host'
import type { Logger, TaskReader, TaskRequest } from '@guoce/interface'
import { RegistryMirrorError, ociError, upstreamStatusError } from './errors.js'
import { resolveUpstream, statusError, upstreamRequest, type Upstream } from './upstream.js'
import { CONFIRM_TTL_MS, SWARM_STALL_MS, MANIFEST_CACHE_BYTES, MAX_CACHE_ENTRIES, MAX_LIST_BYTES, MAX_MANIFEST_BYTES, TAG_CACHE_MS, UPSTREAM_TIMEOUT_MS, VERIFY_HOLD_BYTES, ANON_REFUSED_MS } from './constants.js'

export interface MirrorInit {
  /** the daemon's reader: blobs are tasks read through it */
  reader: TaskReader
  log: Logger
  /** upstream when a request names none (`?ns=`), e.g. `registry.example.com` or `127.0.0.1:5000` */
  defaultUpstream?: string | undefined
  /** upstream hosts asked over plain http although they are not loopback */
  insecure?: readonly string[] | undefined
  /** @default MAX_MANIFEST_BYTES */
  maxManifestBytes?: number | undefined
  /** @default CONFIRM_TTL_MS */
  confirmTtlMs?: number | undefined
  /** @default SWARM_STALL_MS */
  swarmStallMs?: number | undefined
}

export interface MirrorStats {
  requests: Record<string, number>
  /** blob bytes sent to clients, by where they came from */
  blobBytes: { swarm: number, upstream: number }
  /** blob responses served from the swarm, by the task they read: the shared anonymous one, or the client's own */
  blobTasks: { anonymous: number, credential: number }
  /** blobs the swarm could not serve, fetched from the upstream by the mirror itself */
  upstreamFallbacks: number
  /** confirmations asked of the upstream / reused from the cache */
  confirmations: { asked: number, cached: number }
  manifestCache: { hits: number, misses: number }
  errors: Record<string, number>
}

export interface Mirror {
  app: FastifyInstance
  stats: MirrorStats
  /** Prometheus text of the stats (appended to the daemon's /metrics) */
  metrics(): string
}

const NAME_RE = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/
const MANIFEST_TYPES = [
  'application/vnd.oci.image.manifest.v1+json', 'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json', 'application/vnd.docker.distribution.manifest.list.v2+json'
]

/** A Map used as a bounded LRU: touch on read, oldest out first. */
class Lru<V> {
  private readonly m = new Map<string, V>()
  constructor (private readonly maxEntries: number, private readonly maxBytes = Infinity, private readonly sizeOf: (v: V) => number = () => 0) {}
  private bytes = 0
  get (k: string): V | undefined {
    const v = this.m.get(k)
    if (v !== undefined) { this.m.delete(k); this.m.set(k, v) }
    return v
  }

  set (k: string, v: V): void {
    this.delete(k)
    if (this.sizeOf(v) > this.maxBytes) return
    this.m.set(k, v); this.bytes += this.sizeOf(v)
    while (this.m.size > this.maxEntries || this.bytes > this.maxBytes) {
      const oldest = this.m.keys().next().value
      if (oldest === undefined) break
      this.delete(oldest)
    }
  }

  delete (k: string): void {
    const v = this.m.get(k)
    if (v !== undefined) { this.bytes -= this.sizeOf(v); this.m.delete(k) }
  }
}

interface CachedManifest { body: Buffer, mediaType: string }
interface TagEntry { at: number, digest: string, mediaType: string, size: number, body?: Buffer }

function sha256Digest (b: Uint8Array): string { return `sha256:${createHash('sha256').update(b).digest('hex')}` }

/** The route a /v2/ path names. */
type Route = { kind: 'base' } | { kind: 'manifests' | 'blobs' | 'tags' | 'referrers', name: string, ref: string }

function route (path: string): Route {
  if (path === '/v2/' || path === '/v2') return { kind: 'base' }
  let m = /^\/v2\/(.+)\/(manifests|blobs|referrers)\/([^/]+)$/.exec(path)
  let r: { kind: 'manifests' | 'blobs' | 'tags' | 'referrers', name: string, ref: string } | undefined
  if (m != null) {
    let ref: string
    try { ref = decodeURIComponent(m[3]!) } catch { throw ociError(400, m[2] === 'manifests' ? 'MANIFEST_INVALID' : 'DIGEST_INVALID', 'a reference that is not valid percent-encoding') }
    r = { kind: m[2] as 'manifests', name: m[1]!, ref }
  }
  else if ((m = /^\/v2\/(.+)\/tags\/list$/.exec(path)) != null) r = { kind: 'tags', name: m[1]!, ref: '' }
  if (r == null) throw ociError(404, 'UNSUPPORTED', 'not a route of the distribution API read side')
  if (r.name.length > 255 || !NAME_RE.test(r.name)) throw ociError(400, 'NAME_INVALID', `invalid repository name ${JSON.stringify(r.name.slice(0, 100))}`)
  return r
}

function checkDigest (d: string): void {
  try { parseDigest(d) } catch { throw ociError(400, 'DIGEST_INVALID', `invalid digest ${JSON.stringify(d.slice(0, 100))}: expected sha256:<64 lowercase hex>`) }
}

/** `bytes=A-B` / `bytes=A-` / `bytes=-N` of a size; undefined without a Range; 416 for one outside. */
function byteRange (range: string | undefined, size: number): { start: number, end: number } | undefined {
  if (range == null) return undefined
  const m = /^bytes=(\d*)-(\d*)$/.exec(range)
  let start = 0; let end = size - 1
  if (m != null && m[1] !== '') { start = Number(m[1]); if (m[2] !== '') end = Math.min(size - 1, Number(m[2])) } else if (m != null && m[2] !== '') start = Math.max(0, size - Number(m[2]))
  if (m == null || (m[1] === '' && m[2] === '') || start > end || start >= size) throw ociError(416, 'SIZE_INVALID', `range ${JSON.stringify(range.slice(0, 60))} is not satisfiable for ${size} bytes`, { 'content-range': `bytes */${size}` })
  return { start, end }
}

export function buildMirror (init: MirrorInit): Mirror {
  const log = init.log.child({ component: 'registry-mirror' })
  const maxManifest = init.maxManifestBytes ?? MAX_MANIFEST_BYTES
  const confirmTtl = init.confirmTtlMs ?? CONFIRM_TTL_MS
  const manifests = new Lru<CachedManifest>(MAX_CACHE_ENTRIES, MANIFEST_CACHE_BYTES, v => v.body.byteLength)
  const tags = new Lru<TagEntry>(MAX_CACHE_ENTRIES, MANIFEST_CACHE_BYTES, v => v.body?.byteLength ?? 0)
  const confirmed = new Lru<number>(MAX_CACHE_ENTRIES)
  /** upstream + repository whose blobs the upstream would not give anonymously, when that was learnt */
  const anonRefusals = new Lru<number>(MAX_CACHE_ENTRIES)
  const anonRefused = (key: string): boolean => { const at = anonRefusals.get(key); return at != null && Date.now() - at < ANON_REFUSED_MS }
  const stats: MirrorStats = { requests: {}, blobBytes: { swarm: 0, upstream: 0 }, blobTasks: { anonymous: 0, credential: 0 }, upstreamFallbacks: 0, confirmations: { asked: 0, cached: 0 }, manifestCache: { hits: 0, misses: 0 }, errors: {} }
  const app = Fastify({
    logger: false,
    exposeHeadRoutes: false,
    // a path fastify cannot even decode still gets an OCI error body
    frameworkErrors: (err, _req, reply) => { void (reply as FastifyReply).status(400).header('content-type', 'application/json').send(JSON.stringify({ errors: [{ code: 'NAME_INVALID', message: err.message, detail: null }] })) }
  })

  /** the client's Authorization: the only client header the upstream (and a blob task) gets */
  const authOf = (req: FastifyRequest): string | undefined => { const a = req.headers.authorization; return typeof a === 'string' && a !== '' ? a : undefined }
  const credKey = (auth: string | undefined): string => auth == null ? 'anonymous' : createHash('sha256').update('guoce mirror credential v1\0').update(auth).digest('hex')
  const confirmKey = (auth: string | undefined, up: Upstream, name: string): string => `${credKey(auth)}\0${up.base}\0${name}`
  const isConfirmed = (key: string): boolean => {
    const at = confirmed.get(key)
    if (at != null && Date.now() - at < confirmTtl) { stats.confirmations.cached++; return true }
    return false
  }
  const upHeaders = (auth: string | undefined, accept?: string): Record<string, string> => ({ ...(auth != null ? { authorization: auth } : {}), ...(accept != null ? { accept } : {}) })
  const tooBigManifest = (size: number): RegistryMirrorError => ociError(502, 'SIZE_INVALID', `the upstream's manifest of ${size}${size > maxManifest ? '' : '+'} bytes is above the mirror's cap (${maxManifest} bytes)`)

  app.setErrorHandler((err, req, reply) => {
    const e = err as Error & { statusCode?: number }
    const m = e instanceof RegistryMirrorError ? e : e.name === 'RegistryMirrorError' ? e as RegistryMirrorError : ociError(e.statusCode != null && e.statusCode < 500 ? e.statusCode : 500, 'UNAVAILABLE', e.message)
    stats.errors[m.ociCode] = (stats.errors[m.ociCode] ?? 0) + 1
    if (m.status >= 500) log.warn('registry request failed', { path: req.url.split('?')[0], code: m.ociCode, status: m.status, error: m.message })
    void reply.status(m.status).headers({ 'content-type': 'application/json', 'docker-distribution-api-version': 'registry/2.0', ...m.headers })
      .send(req.method === 'HEAD' ? undefined : { errors: [{ code: m.ociCode, message: m.message, detail: null }] })
  })

  app.route({
    method: ['GET', 'HEAD'],
    url: '/v2/*',
    handler: async (req, reply) => {
      const r = route(req.url.split('?')[0]!)
      const head = req.method === 'HEAD'
      stats.requests[r.kind] = (stats.requests[r.kind] ?? 0) + 1
      const q = req.query as Record<string, string | undefined>
      const ns = typeof q.ns === 'string' ? q.ns : undefined
      reply.header('docker-distribution-api-version', 'registry/2.0')
      // a ping that names no registry, to a mirror without a default: the API is here
      if (r.kind === 'base' && ns == null && init.defaultUpstream == null) return await reply.header('content-type', 'application/json').send(head ? undefined : '{}')
      const up = resolveUpstream(ns, init)
      switch (r.kind) {
        case 'base': return await base(up, req, reply)
        case 'manifests': return await manifest(up, r.name, r.ref, head, req, reply)
        case 'blobs': return await blob(up, r.name, r.ref, head, req, reply)
        case 'tags': return await list(up, `/v2/${r.name}/tags/list`, ['n', 'last'], head, req, reply)
        case 'referrers': checkDigest(r.ref); return await list(up, `/v2/${r.name}/referrers/${r.ref}`, ['artifactType'], head, req, reply)
      }
    }
  })
  app.setNotFoundHandler(async () => { throw ociError(404, 'UNSUPPORTED', 'only the read side of the distribution API (/v2/...) is served') })

  /** `/v2/`: the upstream's answer to this client (its 401 challenge tells a client how to log in). */
  async function base (up: Upstream, req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const r = await upstreamRequest('GET', `${up.base}/v2/`, upHeaders(authOf(req)), { maxBytes: MAX_LIST_BYTES })
    if (r.status === 401) throw statusError(r, 'name')
    return await reply.header('content-type', 'application/json').send(req.method === 'HEAD' ? undefined : '{}')
  }

  /** Tag lists and referrers: passed through, bounded, with the client's own Authorization. */
  async function list (up: Upstream, path: string, params: string[], head: boolean, req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const q = req.query as Record<string, string | undefined>
    const u = new URL(path, up.base)
    for (const p of params) if (typeof q[p] === 'string') u.searchParams.set(p, q[p])
    const r = await upstreamRequest('GET', u.toString(), upHeaders(authOf(req)), { maxBytes: MAX_LIST_BYTES })
    if (r.status < 200 || r.status >= 300) throw statusError(r, path.includes('/referrers/') ? 'manifest' : 'name')
    for (const h of ['content-type', 'link']) if (r.headers[h] != null) reply.header(h, r.headers[h])
    return await reply.send(head ? undefined : r.body)
  }

  function sendManifest (reply: FastifyReply, head: boolean, m: { digest: string, mediaType: string, size: number, body?: Buffer | undefined }): FastifyReply {
    void reply.headers({ 'content-type': m.mediaType, 'docker-content-digest': m.digest, etag: `"${m.digest}"` })
    if (head) return reply.header('content-length', String(m.size)).send()
    return reply.send(m.body)
  }

  /**
   * A manifest GET from the upstream, bounded by the cap and checked: its bytes must hash to `want` (by
   * digest) or to the Docker-Content-Digest the upstream names (by tag). Only then is it cached by digest.
   */
  async function fetchManifest (up: Upstream, name: string, ref: string, auth: string | undefined, accept: string, want: string | undefined): Promise<{ digest: string, mediaType: string, body: Buffer }> {
    const r = await upstreamRequest('GET', `${up.base}/v2/${name}/manifests/${ref}`, upHeaders(auth, accept), { maxBytes: maxManifest, tooBig: tooBigManifest })
    if (r.status < 200 || r.status >= 300) throw statusError(r, 'manifest')
    const digest = sha256Digest(r.body)
    const named = want ?? r.headers['docker-content-digest']
    if (named != null && named !== digest) throw ociError(502, 'DIGEST_INVALID', `the upstream's manifest bytes hash to ${digest}, not to ${named}: not served, not cached`)
    const mediaType = r.headers['content-type'] ?? 'application/vnd.oci.image.manifest.v1+json'
    manifests.set(digest, { body: r.body, mediaType })
    return { digest, mediaType, body: r.body }
  }

  async function manifest (up: Upstream, name: string, ref: string, head: boolean, req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const auth = authOf(req)
    // the client's Accept, when it names manifest types (a bare */* would get an OCI manifest refused by some registries)
    const accept = typeof req.headers.accept === 'string' && req.headers.accept.includes('application/vnd.') ? req.headers.accept : MANIFEST_TYPES.join(', ')
    if (ref.includes(':')) {
      checkDigest(ref)
      const key = confirmKey(auth, up, name)
      const cached = manifests.get(ref)
      if (cached != null) {
        if (!isConfirmed(key)) {
          stats.confirmations.asked++
          const r = await upstreamRequest('HEAD', `${up.base}/v2/${name}/manifests/${ref}`, upHeaders(auth, accept))
          if (r.status < 200 || r.status >= 300) throw statusError(r, 'manifest')
          confirmed.set(key, Date.now())
        }
        stats.manifestCache.hits++
        return sendManifest(reply, head, { digest: ref, mediaType: cached.mediaType, size: cached.body.byteLength, body: cached.body })
      }
      // the GET with the client's Authorization is itself the confirmation
      stats.manifestCache.misses++
      const m = await fetchManifest(up, name, ref, auth, accept, ref)
      confirmed.set(key, Date.now())
      return sendManifest(reply, head, { ...m, size: m.body.byteLength })
    }
    if (!TAG_RE.test(ref)) throw ociError(400, 'MANIFEST_INVALID', `invalid tag ${JSON.stringify(ref.slice(0, 130))}`)
    // by tag: the upstream is asked (with this client's Authorization) at most every TAG_CACHE_MS
    const key = `${credKey(auth)}\0${up.base}\0${name}\0${ref}\0${accept}`
    let e = tags.get(key)
    if (e == null || Date.now() - e.at > TAG_CACHE_MS || (!head && e.body == null)) {
      if (head) {
        const r = await upstreamRequest('HEAD', `${up.base}/v2/${name}/manifests/${ref}`, upHeaders(auth, accept))
        if (r.status < 200 || r.status >= 300) throw statusError(r, 'manifest')
        const digest = r.headers['docker-content-digest']
        const size = Number(r.headers['content-length'] ?? NaN)
        if (digest != null && /^sha256:[0-9a-f]{64}$/.test(digest) && Number.isSafeInteger(size)) {
          if (size > maxManifest) throw tooBigManifest(size)
          e = { at: Date.now(), digest, size, mediaType: r.headers['content-type'] ?? MANIFEST_TYPES[0]! }
        }
      }
      if (e == null || Date.now() - e.at > TAG_CACHE_MS || (!head && e.body == null)) {
        const m = await fetchManifest(up, name, ref, auth, accept, undefined)
        e = { at: Date.now(), digest: m.digest, size: m.body.byteLength, mediaType: m.mediaType, body: m.body }
      }
      tags.set(key, e)
      confirmed.set(confirmKey(auth, up, name), Date.now())
    }
    return sendManifest(reply, head, e)
  }

  /** The upstream's word that this credential may read this blob of this repository (cached per credential and repository). */
  async function confirmBlob (up: Upstream, name: string, digest: string, auth: string | undefined, force: boolean): Promise<number | undefined> {
    const key = confirmKey(auth, up, name)
    if (!force && isConfirmed(key)) return undefined
    stats.confirmations.asked++
    const r = await upstreamRequest('HEAD', `${up.base}/v2/${name}/blobs/${digest}`, upHeaders(auth))
    if (r.status < 200 || r.status >= 300) throw statusError(r, 'blob')
    confirmed.set(key, Date.now())
    const size = Number(r.headers['content-length'] ?? NaN)
    return Number.isSafeInteger(size) && size >= 0 ? size : undefined
  }

  async function blob (up: Upstream, name: string, digest: string, head: boolean, req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    checkDigest(digest)
    const auth = authOf(req)
    // HEAD: the upstream's own answer (size) is also the confirmation
    const size = await confirmBlob(up, name, digest, auth, head)
    void reply.headers({ 'docker-content-digest': digest, 'content-type': 'application/octet-stream', 'accept-ranges': 'bytes', etag: `"${digest}"` })
    if (head) {
      if (size == null) throw ociError(502, 'UNAVAILABLE', 'the upstream named no size for the blob')
      return reply.header('content-length', String(size)).send()
    }
    const url = `${up.base}/v2/${name}/blobs/${digest}`
    const ac = new AbortController()
    reply.raw.once('close', () => { ac.abort() })
    const rangeHeader = typeof req.headers.range === 'string' ? req.headers.range : undefined
    let body: { total: number, range: { start: number, end: number } | undefined, first: IteratorResult<Uint8Array>, it: AsyncIterator<Uint8Array>, source: 'swarm' | 'upstream' } | undefined
    // the task everyone shares: the blob as the upstream gives it to anyone (its seed fetches it without a
    // credential, with the registry's anonymous token where it has a token service); a client with a
    // credential reads it too, now that the upstream confirmed this client may read the repository. Where
    // the upstream refuses anonymous reads of the repository, the client's own task: its credential is in
    // the request (and so in the task id), and only that credential shares it.
    const anonKey = `${up.base}\0${name}`
    const shared = auth == null || !anonRefused(anonKey)
    const tasks: Array<{ kind: 'anonymous' | 'credential', request: TaskRequest }> = []
    if (shared) tasks.push({ kind: 'anonymous', request: { url, digest } })
    if (auth != null) tasks.push({ kind: 'credential', request: { url, digest, headers: { authorization: auth } } })
    let failure: Error | undefined
    for (const t of tasks) {
      try {
        body = await fromSwarm(t.request, rangeHeader, ac.signal)
        stats.blobTasks[t.kind]++
        break
      } catch (err) {
        if (ac.signal.aborted) throw err
        if (err instanceof RegistryMirrorError && err.status === 416) throw err
        failure = err as Error
        const status = (err as { status?: unknown }).status
        // the upstream refuses anonymous reads here: the client's own task next (and for a while)
        if (t.kind === 'anonymous' && auth != null && (err as Error).name === 'OriginStatusError' && (status === 401 || status === 403 || status === 404)) {
          anonRefusals.set(anonKey, Date.now())
          continue
        }
        break
      }
    }
    if (body == null) {
      stats.upstreamFallbacks++
      log.warn('the swarm could not serve a blob: fetching it from the upstream', { upstream: up.host, repository: name, digest, reason: failure?.name, error: failure?.message })
      body = await fromUpstream(url, digest, auth, rangeHeader, ac.signal)
    }
    const { total, range, first, it, source } = body
    if (range != null) void reply.status(206).header('content-range', `bytes ${range.start}-${range.end}/${total}`)
    void reply.header('content-length', String(range != null ? range.end - range.start + 1 : total))
    async function * rest (): AsyncGenerator<Uint8Array> {
      try {
        if (first.done === true) return
        stats.blobBytes[source] += first.value.byteLength
        yield first.value
        for (let n = await it.next(); n.done !== true; n = await it.next()) { stats.blobBytes[source] += n.value.byteLength; yield n.value }
      } catch (err) {
        // headers are out: the response ends short, never complete with a wrong byte
        log.warn('blob response broken off', { repository: name, digest, source, error: (err as Error).message })
        throw err
      } finally {
        await it.return?.()
      }
    }
    return await reply.send(Readable.from(rest(), { objectMode: false }))
  }

  /**
   * The blob as a P2P task through the reader: the status waits for the first verified bytes. A slow
   * swarm is waited for (whileProgressing: a read fails only once the task received nothing for
   * SWARM_STALL_MS, or when the task fails), so what the upstream serves does not grow with load.
   */
  async function fromSwarm (request: TaskRequest, rangeHeader: string | undefined, signal: AbortSignal): Promise<{ total: number, range: { start: number, end: number } | undefined, first: IteratorResult<Uint8Array>, it: AsyncIterator<Uint8Array>, source: 'swarm' }> {
    const wait = { timeoutMs: init.swarmStallMs ?? SWARM_STALL_MS, whileProgressing: true }
    const info = await init.reader.stat({ request, signal, ...wait })
    const range = byteRange(rangeHeader, info.contentLength)
    const it = init.reader.stream({ request, signal, ...wait, ...(range != null ? { offset: range.start, end: range.end + 1 } : {}) })[Symbol.asyncIterator]()
    const first = await it.next()
    return { total: info.contentLength, range, first, it, source: 'swarm' }
  }

  /**
   * The blob from the upstream, by the mirror itself: the whole blob is hashed as it passes, the bytes of
   * the range go out, and the last of them only once the whole blob matched its digest.
   */
  async function fromUpstream (url: string, digest: string, auth: string | undefined, rangeHeader: string | undefined, signal: AbortSignal): Promise<{ total: number, range: { start: number, end: number } | undefined, first: IteratorResult<Uint8Array>, it: AsyncIterator<Uint8Array>, source: 'upstream' }> {
    let res: Awaited<ReturnType<typeof openSource>>
    try {
      res = await openSource({ url, headers: auth != null ? { authorization: auth } : {} }, { signal, timeoutMs: UPSTREAM_TIMEOUT_MS })
    } catch (err) {
      const e = err as Error & { status?: number }
      if (e.name === 'OriginStatusError' && e.status != null) throw upstreamStatusError(e.status, 'blob')
      if (e.name === 'AbortError') throw err
      throw ociError(503, 'UNAVAILABLE', `the upstream registry cannot be read: ${e.message}`)
    }
    const total = res.length
    if (total == null) throw ociError(502, 'UNAVAILABLE', 'the upstream sent a blob without Content-Length')
    let range: { start: number, end: number } | undefined
    try { range = byteRange(rangeHeader, total) } catch (err) { (res.body as AsyncGenerator).return?.(undefined).catch(() => {}); throw err }
    const start = range?.start ?? 0
    const end = (range?.end ?? total - 1) + 1
    const body = res.body
    async function * verified (): AsyncGenerator<Uint8Array> {
      const h = createHash('sha256')
      let pos = 0
      // bytes of the range not sent yet: up to VERIFY_HOLD_BYTES (a small blob is checked whole before its
      // status goes out) and always the last of them, until the whole blob matched
      const held: Uint8Array[] = []
      let heldBytes = 0
      try {
        for await (const c of body) {
          h.update(c)
          const s = Math.max(start, pos); const e = Math.min(end, pos + c.byteLength)
          if (s < e) { held.push(c.subarray(s - pos, e - pos)); heldBytes += e - s }
          pos += c.byteLength
          while (held.length > 1 && heldBytes - held[0]!.byteLength >= VERIFY_HOLD_BYTES) { const out = held.shift()!; heldBytes -= out.byteLength; yield out }
        }
      } catch (err) {
        throw ociError(503, 'UNAVAILABLE', `the upstream broke off the blob: ${(err as Error).message}`)
      }
      const got = `sha256:${h.digest('hex')}`
      if (got !== digest) throw ociError(502, 'DIGEST_INVALID', `the upstream's blob bytes hash to ${got}, not to ${digest}`)
      yield * held
    }
    const it = verified()
    const first = await it.next()
    return { total, range, first, it, source: 'upstream' }
  }

  function metrics (): string {
    const s = stats
    return [
      '# TYPE guoce_mirror_requests_total counter',
      ...Object.entries(s.requests).map(([k, n]) => `guoce_mirror_requests_total{kind="${k}"} ${n}`),
      '# TYPE guoce_mirror_blob_bytes_total counter',
      `guoce_mirror_blob_bytes_total{source="swarm"} ${s.blobBytes.swarm}`,
      `guoce_mirror_blob_bytes_total{source="upstream"} ${s.blobBytes.upstream}`,
      '# TYPE guoce_mirror_blob_tasks_total counter',
      `guoce_mirror_blob_tasks_total{task="anonymous"} ${s.blobTasks.anonymous}`,
      `guoce_mirror_blob_tasks_total{task="credential"} ${s.blobTasks.credential}`,
      '# TYPE guoce_mirror_upstream_fallbacks_total counter',
      `guoce_mirror_upstream_fallbacks_total ${s.upstreamFallbacks}`,
      '# TYPE guoce_mirror_confirmations_total counter',
      `guoce_mirror_confirmations_total{result="asked"} ${s.confirmations.asked}`,
      `guoce_mirror_confirmations_total{result="cached"} ${s.confirmations.cached}`,
      '# TYPE guoce_mirror_manifest_cache_total counter',
      `guoce_mirror_manifest_cache_total{result="hit"} ${s.manifestCache.hits}`,
      `guoce_mirror_manifest_cache_total{result="miss"} ${s.manifestCache.misses}`,
      '# TYPE guoce_mirror_errors_total counter',
      ...Object.entries(s.errors).map(([k, n]) => `guoce_mirror_errors_total{code="${k}"} ${n}`)
    ].join('\n') + '\n'
  }

  return { app, stats, metrics }
}
