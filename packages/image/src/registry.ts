/**
 * A small OCI distribution API client: `docker://REGISTRY/REPO[:TAG][@sha256:DIGEST]` references, pull into
 * an OCI image layout and push from one. Built on Node's fetch.
 *
 * - Plain http for 127.0.0.1, ::1 and localhost (any port), https otherwise; `plainHttp` overrides.
 * - Auth: a 401 with `WWW-Authenticate: Bearer realm=...,service=...,scope=...` fetches a token from the realm
 *   (with basic credentials `user:pass` from `auth` or env GUOCE_REGISTRY_AUTH when given), cached per scope,
 *   and the request is retried once; a `Basic` challenge is answered with those credentials.
 * - Pull: manifests with Accept for OCI manifest/index and Docker v2 manifest/list; an index resolves to
 *   linux/amd64, else to its only entry. Every blob (and every manifest fetched by digest) is verified
 *   against its descriptor's sha256 and size before it is stored under its digest.
 * - Push: HEAD blob; if missing, POST /v2/REPO/blobs/uploads/ then one PUT LOCATION?digest=... streamed from
 *   the file (monolithic upload); then PUT the manifest with its media type.
 *
 * The registry host must be named (it contains a `.` or `:`, or is `localhost`): `docker://x/y:z` does not
 * silently mean Docker Hub.
 */
import { createReadStream } from 'node:fs'
import { mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { createHash, randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import type { Descriptor, Manifest } from './oci.js'
import {
  InvalidImageRefError, RegistryAuthError, RegistryDeniedError, RegistryDigestMismatchError, RegistryError, RegistryNotFoundError
} from './errors.js'

export const MEDIA_TYPE_DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json'
export const MEDIA_TYPE_DOCKER_MANIFEST_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json'
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
const ACCEPT = [OCI_MANIFEST, OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST].join(', ')
/** Largest manifest or index read into memory. */
export const MAX_MANIFEST_SIZE = 4 * 1024 * 1024
/**
 * Largest token service answer read (a JSON object with a token of a few KiB).
 * @default 64 KiB
 */
export const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
const REF_NAME = 'org.opencontainers.image.ref.name'

export interface DockerRef {
  /** host[:port] */
  registry: string
  repository: string
  tag: string | undefined
  digest: string | undefined
}

export function isDockerRef (ref: string): boolean { return ref.startsWith('docker://') }

/** Parses `docker://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`; no tag and no digest means `:latest`. */
export function parseDockerRef (ref: string): DockerRef {
  const bad = (why: string): never => { throw new InvalidImageRefError(`${JSON.stringify(ref)}: ${why} (expected docker://REGISTRY/REPO[:TAG][@sha256:DIGEST])`) }
  if (!isDockerRef(ref)) bad('not a docker:// reference')
  let rest = ref.slice('docker://'.length)
  let digest: string | undefined
  const at = rest.indexOf('@')
  if (at !== -1) {
    digest = rest.slice(at + 1)
    rest = rest.slice(0, at)
    if (!/^sha256:[0-9a-f]{64}$/.test(digest)) bad(`unsupported digest ${JSON.stringify(digest)}`)
  }
  const slash = rest.indexOf('/')
  if (slash <= 0) bad('no repository')
  const registry = rest.slice(0, slash)
  let path = rest.slice(slash + 1)
  if (!registry.includes('.') && !registry.includes(':') && registry !== 'localhost') bad(`${JSON.stringify(registry)} is not a registry host (name it, e.g. docker://registry.example.com/${rest})`)
  if (!/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/.test(registry)) bad(`bad registry host ${JSON.stringify(registry)}`)
  let tag: string | undefined
  const colon = path.lastIndexOf(':')
  if (colon !== -1) {
    tag = path.slice(colon + 1)
    path = path.slice(0, colon)
    if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(tag)) bad(`bad tag ${JSON.stringify(tag)}`)
  }
  if (!/^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/.test(path)) bad(`bad repository name ${JSON.stringify(path)}`)
  if (tag === undefined && digest === undefined) tag = 'latest'
  return { registry, repository: path, tag, digest }
}

export function formatDockerRef (r: DockerRef): string {
  return `docker://${r.registry}/${r.repository}${r.tag !== undefined ? ':' + r.tag : ''}${r.digest !== undefined ? '@' + r.digest : ''}`
}

export interface RegistryOptions {
  /** Use http instead of https. Default: true for 127.0.0.1, ::1 and localhost, false otherwise. */
  plainHttp?: boolean
  /** `user:pass` for token realms and Basic challenges. Default: env GUOCE_REGISTRY_AUTH. */
  auth?: string
  signal?: AbortSignal
}

interface Challenge { scheme: string, params: Record<string, string> }

/** Parses one WWW-Authenticate challenge (`Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`). */
export function parseChallenge (header: string): Challenge | undefined {
  const m = /^\s*([A-Za-z]+)\s*(.*)$/s.exec(header)
  if (m === null) return undefined
  const params: Record<string, string> = {}
  const re = /([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?\s*/g
  for (const p of m[2]!.matchAll(re)) params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3]!
  return { scheme: m[1]!.toLowerCase(), params }
}

type BodyInit = NonNullable<RequestInit['body']>
type BodyFactory = () => { body: BodyInit, length?: number }

interface Req {
  method: string
  /** Path below the registry base (`/v2/...`) or an absolute URL (upload locations). */
  url: string
  scope: string
  headers?: Record<string, string>
  body?: BodyFactory
  /** Statuses handled by the caller instead of being turned into errors. */
  ok?: number[]
}

export class RegistryClient {
  readonly registry: string
  readonly base: string
  private readonly auth: string | undefined
  private readonly signal: AbortSignal | undefined
  private readonly tokens = new Map<string, string>()
  private basic = false

  constructor (registry: string, opts: RegistryOptions = {}) {
    this.registry = registry
    const host = registry.replace(/:\d+$/, '').replace(/^\[|\]$/g, '')
    const plain = opts.plainHttp ?? (host === '127.0.0.1' || host === 'localhost' || host === '::1')
    this.base = `${plain ? 'http' : 'https'}://${registry}`
    const auth = opts.auth ?? process.env.GUOCE_REGISTRY_AUTH
    this.auth = auth !== undefined && auth !== '' ? auth : undefined
    this.signal = opts.signal
  }

  private authHeader (scope: string): string | undefined {
    const t = this.tokens.get(scope)
    if (t !== undefined) return `Bearer ${t}`
    if (this.basic && this.auth !== undefined) return `Basic ${Buffer.from(this.auth).toString('base64')}`
    return undefined
  }

  private async send (req: Req): Promise<Response> {
    const url = new URL(req.url, this.base)
    const headers: Record<string, string> = { ...req.headers }
    const a = this.authHeader(req.scope)
    if (a !== undefined) headers.authorization = a
    const b = req.body?.()
    if (b?.length !== undefined) headers['content-length'] = String(b.length)
    try {
      return await fetch(url, {
        method: req.method,
        headers,
        redirect: 'follow',
        ...(b !== undefined ? { body: b.body, duplex: 'half' } : {}),
        ...(this.signal !== undefined ? { signal: this.signal } : {})
      } as RequestInit)
    } catch (err) {
      if ((err as Error).name === 'AbortError') throw err
      const cause = (err as { cause?: Error }).cause
      throw new RegistryError(`${req.method} ${url.href}: ${cause?.message ?? (err as Error).message}`, { cause: err })
    }
  }

  /** Sends a request, answering one auth challenge; turns failure statuses into named errors. */
  async request (req: Req): Promise<Response> {
    let res = await this.send(req)
    if (res.status === 401) {
      const ch = parseChallenge(res.headers.get('www-authenticate') ?? '')
      await drain(res)
      if (ch?.scheme === 'bearer' && ch.params.realm !== undefined) {
        await this.fetchToken(ch, req.scope)
        res = await this.send(req)
      } else if (ch?.scheme === 'basic' && this.auth !== undefined && !this.basic) {
        this.basic = true
        res = await this.send(req)
      } else if (ch?.scheme === 'basic') {
        throw new RegistryAuthError(`${this.registry}: ${req.method} ${pathOf(req.url)}: 401 Unauthorized: ${this.auth === undefined ? 'basic credentials required (set GUOCE_REGISTRY_AUTH=user:pass)' : 'credentials refused'}`)
      }
    }
    if (req.ok?.includes(res.status) === true || (res.status >= 200 && res.status < 300)) return res
    throw await statusError(res, `${this.registry}: ${req.method} ${pathOf(req.url)}`, this.auth !== undefined)
  }

  private async fetchToken (ch: Challenge, scope: string): Promise<void> {
    const realm = new URL(ch.params.realm!)
    if (ch.params.service !== undefined) realm.searchParams.set('service', ch.params.service)
    const scopes = new Set([scope, ...(ch.params.scope !== undefined ? ch.params.scope.split(' ') : [])].filter(s => s !== ''))
    for (const s of scopes) realm.searchParams.append('scope', s)
    const headers: Record<string, string> = {}
    if (this.auth !== undefined) headers.authorization = `Basic ${Buffer.from(this.auth).toString('base64')}`
    let res: Response
    try {
      res = await fetch(realm, { headers, ...(this.signal !== undefined ? { signal: this.signal } : {}) })
    } catch (err) {
      if ((err as Error).name === 'AbortError') throw err
      throw new RegistryError(`token service ${realm.origin}${realm.pathname}: ${(err as { cause?: Error }).cause?.message ?? (err as Error).message}`, { cause: err })
    }
    if (res.status === 401) {
      await drain(res)
      throw new RegistryAuthError(`${this.registry}: token service ${realm.origin}${realm.pathname} refused ${this.auth === undefined ? 'anonymous access (set GUOCE_REGISTRY_AUTH=user:pass)' : 'the credentials in GUOCE_REGISTRY_AUTH'} for ${[...scopes].join(' ')}`)
    }
    if (!res.ok) throw await statusError(res, `${this.registry}: token service ${realm.origin}${realm.pathname}`, this.auth !== undefined)
    // a token answer is small: bounded before it is parsed
    const raw = await readCapped(res, MAX_TOKEN_RESPONSE_BYTES, `${this.registry}: token service ${realm.origin}${realm.pathname}`)
    let body: { token?: string, access_token?: string } | undefined
    try { body = JSON.parse(raw.toString('utf8')) } catch { body = undefined }
    const token = body?.token ?? body?.access_token
    if (typeof token !== 'string' || token === '') throw new RegistryError(`${this.registry}: token service ${realm.origin}${realm.pathname} answered no token`)
    this.tokens.set(scope, token)
  }

  /** Fetches a manifest or index by tag or digest; verifies the digest when the reference is one. */
  async getManifest (repository: string, reference: string): Promise<{ bytes: Buffer, mediaType: string, digest: string }> {
    const res = await this.request({ method: 'GET', url: `/v2/${repository}/manifests/${reference}`, scope: `repository:${repository}:pull`, headers: { accept: ACCEPT } })
    const bytes = await readCapped(res, MAX_MANIFEST_SIZE, `${this.registry}/${repository}: manifest ${reference}`)
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`
    if (reference.startsWith('sha256:') && digest !== reference) throw new RegistryDigestMismatchError(`${this.registry}/${repository}: manifest ${reference}: bytes hash to ${digest}`)
    const claimed = res.headers.get('docker-content-digest')
    if (claimed !== null && claimed.startsWith('sha256:') && claimed !== digest) throw new RegistryDigestMismatchError(`${this.registry}/${repository}: manifest ${reference}: bytes hash to ${digest}, the registry says ${claimed}`)
    let parsed: { mediaType?: string, manifests?: unknown, layers?: unknown }
    try {
      parsed = JSON.parse(bytes.toString('utf8')) as typeof parsed
    } catch (err) {
      throw new RegistryError(`${this.registry}/${repository}: manifest ${reference} is not JSON`, { cause: err })
    }
    const ct = (res.headers.get('content-type') ?? '').split(';')[0]!.trim()
    const mediaType = parsed.mediaType ?? (ct !== '' && ct !== 'application/json' ? ct : Array.isArray(parsed.manifests) ? OCI_INDEX : OCI_MANIFEST)
    return { bytes, mediaType, digest }
  }

  /** Downloads a blob to `path`, verifying size and sha256 before the file appears. */
  async getBlob (repository: string, d: Descriptor, path: string): Promise<void> {
    const res = await this.request({ method: 'GET', url: `/v2/${repository}/blobs/${d.digest}`, scope: `repository:${repository}:pull` })
    const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`
    const fh = await open(tmp, 'wx')
    const hash = createHash('sha256')
    let n = 0
    try {
      if (res.body !== null) {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          n += chunk.length
          if (n > d.size) throw new RegistryDigestMismatchError(`${this.registry}/${repository}: blob ${d.digest}: more than the ${d.size} bytes its descriptor names`)
          hash.update(chunk)
          await fh.write(chunk)
        }
      }
      if (n !== d.size) throw new RegistryDigestMismatchError(`${this.registry}/${repository}: blob ${d.digest}: ${n} bytes, its descriptor names ${d.size}`)
      const got = `sha256:${hash.digest('hex')}`
      if (got !== d.digest) throw new RegistryDigestMismatchError(`${this.registry}/${repository}: blob ${d.digest}: bytes hash to ${got}`)
      await fh.sync()
      await fh.close()
      await rename(tmp, path)
    } catch (err) {
      await fh.close().catch(() => {})
      await rm(tmp, { force: true })
      if (res.body !== null && !res.bodyUsed) await res.body.cancel().catch(() => {})
      throw err
    }
  }

  async hasBlob (repository: string, digest: string): Promise<boolean> {
    const res = await this.request({ method: 'HEAD', url: `/v2/${repository}/blobs/${digest}`, scope: `repository:${repository}:pull,push`, ok: [404] })
    await drain(res)
    return res.status !== 404
  }

  /** Monolithic upload of a local file: POST for an upload location, then one PUT with ?digest=. */
  async putBlob (repository: string, digest: string, path: string): Promise<void> {
    const scope = `repository:${repository}:pull,push`
    const size = (await stat(path)).size
    const start = await this.request({ method: 'POST', url: `/v2/${repository}/blobs/uploads/`, scope, headers: { 'content-length': '0' } })
    await drain(start)
    const location = start.headers.get('location')
    if (location === null) throw new RegistryError(`${this.registry}/${repository}: upload of ${digest}: no Location in the answer`)
    const url = new URL(location, this.base)
    url.searchParams.set('digest', digest)
    const res = await this.request({
      method: 'PUT',
      url: url.href,
      scope,
      headers: { 'content-type': 'application/octet-stream' },
      body: () => ({ body: Readable.toWeb(createReadStream(path)) as unknown as BodyInit, length: size })
    })
    await drain(res)
    const got = res.headers.get('docker-content-digest')
    if (got !== null && got !== digest) throw new RegistryDigestMismatchError(`${this.registry}/${repository}: uploaded ${digest}, the registry stored ${got}`)
  }

  async putManifest (repository: string, reference: string, bytes: Buffer, mediaType: string): Promise<string> {
    const res = await this.request({
      method: 'PUT',
      url: `/v2/${repository}/manifests/${reference}`,
      scope: `repository:${repository}:pull,push`,
      headers: { 'content-type': mediaType },
      body: () => ({ body: bytes, length: bytes.length })
    })
    await drain(res)
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`
    const got = res.headers.get('docker-content-digest')
    if (got !== null && got !== digest) throw new RegistryDigestMismatchError(`${this.registry}/${repository}: pushed manifest ${digest}, the registry stored ${got}`)
    return digest
  }
}

function pathOf (url: string): string {
  return url.startsWith('/') ? url : new URL(url).pathname
}

async function drain (res: Response): Promise<void> {
  if (res.body !== null && !res.bodyUsed) await res.body.cancel().catch(() => {})
}

async function readCapped (res: Response, max: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = []
  let n = 0
  if (res.body !== null) {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      n += chunk.length
      if (n > max) {
        await res.body.cancel().catch(() => {})
        throw new RegistryError(`${what}: larger than ${max} bytes`)
      }
      parts.push(Buffer.from(chunk))
    }
  }
  return Buffer.concat(parts)
}

/** One line from a registry's error body (`{"errors":[{"code":..., "message":...}]}`), if any. */
async function errorDetail (res: Response): Promise<string> {
  const text = await readCapped(res, 64 * 1024, 'error body').then(b => b.toString('utf8'), () => '')
  try {
    const j = JSON.parse(text) as { errors?: Array<{ code?: string, message?: string }> }
    const e = j.errors?.[0]
    if (e !== undefined) return `: ${[e.code, e.message].filter(x => x !== undefined && x !== '').join(' ')}`.replace(/\s+/g, ' ').slice(0, 300)
  } catch {}
  return ''
}

async function statusError (res: Response, what: string, haveAuth: boolean): Promise<Error> {
  const detail = await errorDetail(res)
  switch (res.status) {
    case 401: return new RegistryAuthError(`${what}: 401 Unauthorized${detail}${haveAuth ? ' (credentials refused)' : ' (set GUOCE_REGISTRY_AUTH=user:pass)'}`)
    case 403: return new RegistryDeniedError(`${what}: 403 Forbidden${detail}`)
    case 404: return new RegistryNotFoundError(`${what}: 404 Not Found${detail}`)
    default: return new RegistryError(`${what}: ${res.status} ${res.statusText}${detail}`)
  }
}

function layoutBlob (dir: string, digest: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(digest)
  if (m === null) throw new InvalidImageRefError(`unsupported digest ${JSON.stringify(digest)}`)
  return join(dir, 'blobs', 'sha256', m[1]!)
}

async function exists (p: string): Promise<boolean> {
  return await stat(p).then(() => true, () => false)
}

/**
 * Pulls one image (a manifest, its config and layers; an index resolves to linux/amd64, else its only entry)
 * into an OCI image layout at `dir`, tagged `tag`. Returns the stored manifest's descriptor.
 */
export async function pullImage (ref: string | DockerRef, dir: string, tag: string, opts: RegistryOptions = {}): Promise<Descriptor> {
  const r = typeof ref === 'string' ? parseDockerRef(ref) : ref
  const client = new RegistryClient(r.registry, opts)
  let m = await client.getManifest(r.repository, r.digest ?? r.tag!)
  let doc = JSON.parse(m.bytes.toString('utf8')) as Manifest | { manifests?: Descriptor[] }
  if (m.mediaType === OCI_INDEX || m.mediaType === MEDIA_TYPE_DOCKER_MANIFEST_LIST || Array.isArray((doc as { manifests?: unknown }).manifests)) {
    const list = (doc as { manifests?: Descriptor[] }).manifests ?? []
    const pick = list.find(d => d.platform?.os === 'linux' && d.platform.architecture === 'amd64') ?? (list.length === 1 ? list[0] : undefined)
    if (pick === undefined) throw new InvalidImageRefError(`${formatDockerRef(r)}: image index has ${list.length} entries and none for linux/amd64`)
    m = await client.getManifest(r.repository, pick.digest)
    if (m.bytes.length !== pick.size) throw new RegistryDigestMismatchError(`${formatDockerRef(r)}: manifest ${pick.digest}: ${m.bytes.length} bytes, its descriptor names ${pick.size}`)
    doc = JSON.parse(m.bytes.toString('utf8')) as Manifest
  }
  const manifest = doc as Manifest
  if (!Array.isArray(manifest.layers) || manifest.config === undefined) throw new InvalidImageRefError(`${formatDockerRef(r)}: not an image manifest (media type ${m.mediaType})`)
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true })
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))
  for (const d of [manifest.config, ...manifest.layers]) {
    const p = layoutBlob(dir, d.digest)
    if (!await exists(p)) await client.getBlob(r.repository, d, p)
  }
  await writeFile(layoutBlob(dir, m.digest), m.bytes)
  const desc: Descriptor = { mediaType: m.mediaType, digest: m.digest, size: m.bytes.length }
  await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ ...desc, annotations: { [REF_NAME]: tag } }] }))
  return desc
}

/**
 * Pushes the manifest tagged `tag` in the OCI layout at `dir` (its config and layers first, each only when
 * the registry lacks it) to `ref`, which must name a tag. Returns the manifest digest.
 */
export async function pushImage (dir: string, tag: string, ref: string | DockerRef, opts: RegistryOptions = {}): Promise<string> {
  const r = typeof ref === 'string' ? parseDockerRef(ref) : ref
  if (r.tag === undefined) throw new InvalidImageRefError(`${formatDockerRef(r)}: a push target needs a tag`)
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Descriptor[] }
  const desc = index.manifests.find(d => d.annotations?.[REF_NAME] === tag)
  if (desc === undefined) throw new InvalidImageRefError(`oci:${dir}:${tag}: no such tag`)
  const bytes = await readFile(layoutBlob(dir, desc.digest))
  const manifest = JSON.parse(bytes.toString('utf8')) as Manifest
  const client = new RegistryClient(r.registry, opts)
  for (const d of [manifest.config, ...manifest.layers]) {
    if (await client.hasBlob(r.repository, d.digest)) continue
    await client.putBlob(r.repository, d.digest, layoutBlob(dir, d.digest))
  }
  return await client.putManifest(r.repository, r.tag, bytes, manifest.mediaType ?? desc.mediaType)
}
