/**
 * docker:// sources and targets over the OCI distribution API, against the real distribution registry
 * (`docker-registry serve`), with images pushed and read back by skopeo. A small node:http front in the test
 * adds the Bearer token flow (realm demanding basic credentials), a same-origin blob redirect and, on demand,
 * corrupt blob bytes.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { randomBytes } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  checkImageRef, convertImage, parseDockerRef, parseChallenge, readManifest, parseOciRef, RegistryClient, InvalidImageRefError,
  MEDIA_TYPE_CHUNK_BLOB, MEDIA_TYPE_EROFS_META, MAX_TOKEN_RESPONSE_BYTES, type Manifest
} from '../src/index.js'
import { cleanup, requireTools, run, tempDir } from './helpers.js'

const OURS = new Set([MEDIA_TYPE_CHUNK_BLOB, MEDIA_TYPE_EROFS_META])
const USER = 'alice:s3cret'
const SERVICE = 'guoce-test-registry'

/** Starts `docker-registry serve` on 127.0.0.1 with a kernel-chosen port; resolves once GET /v2/ answers. */
async function startRegistry (dir: string): Promise<{ proc: ChildProcess, host: string }> {
  await mkdir(join(dir, 'data'), { recursive: true })
  const cfg = join(dir, 'config.yml')
  await writeFile(cfg, [
    'version: 0.1',
    'log:', '  level: info',
    'storage:', '  filesystem:', `    rootdirectory: ${join(dir, 'data')}`, '  delete:', '    enabled: true',
    'http:', '  addr: 127.0.0.1:0', `  secret: ${randomBytes(16).toString('hex')}`
  ].join('\n') + '\n')
  const proc = spawn('docker-registry', ['serve', cfg], { stdio: ['ignore', 'ignore', 'pipe'] })
  const host = await new Promise<string>((resolve, reject) => {
    let log = ''
    const onData = (d: Buffer): void => {
      log += d.toString()
      const m = /listening on (127\.0\.0\.1:\d+)/.exec(log)
      if (m !== null) { proc.stderr!.off('data', onData); proc.stderr!.resume(); resolve(m[1]!) }
    }
    proc.stderr!.on('data', onData)
    proc.once('error', reject)
    proc.once('exit', code => { reject(new Error(`docker-registry exited (${code}) before listening: ${log}`)) })
  })
  const res = await fetch(`http://${host}/v2/`)
  if (res.status !== 200) throw new Error(`registry at ${host}: GET /v2/ answered ${res.status}`)
  return { proc, host }
}

interface Front {
  server: Server
  host: string
  tokenRequests: Array<{ service: string | null, scopes: string[], basic: string | undefined }>
  redirects: number
  corruptBlobs: boolean
  /** Answer /v2/* with Basic challenges instead of Bearer ones. */
  basicOnly: boolean
  /** Answer /token with a 1 MiB JSON body (a hostile token service). */
  hugeToken: boolean
  /** Every method+path the front saw on /v2/ (after auth). */
  seen: string[]
}

/**
 * A token-auth front for the registry: /v2/* needs `Authorization: Bearer <token>` whose scope grants the
 * repository and action (GET/HEAD pull, else push), or gets a 401 Bearer challenge. /token checks service,
 * scope syntax and basic credentials, then issues a token. Blob GETs are redirected (307) to /_blob/...
 */
async function startFront (registry: string): Promise<Front> {
  const tokens = new Map<string, string[]>()
  const [rhost, rport] = registry.split(':') as [string, string]
  const front: Front = { server: undefined as unknown as Server, host: '', tokenRequests: [], redirects: 0, corruptBlobs: false, basicOnly: false, hugeToken: false, seen: [] }
  const proxy = (req: IncomingMessage, res: ServerResponse, path: string): void => {
    const isBlobGet = req.method === 'GET' && /\/blobs\/sha256:/.test(path)
    const up = httpRequest({ host: rhost, port: Number(rport), method: req.method, path, headers: req.headers }, r => {
      if (isBlobGet && front.corruptBlobs && r.statusCode === 200) {
        const parts: Buffer[] = []
        r.on('data', (d: Buffer) => parts.push(d))
        r.on('end', () => {
          const body = Buffer.concat(parts)
          if (body.length > 0) body[body.length - 1] = body[body.length - 1]! ^ 0xff
          res.writeHead(200, r.headers)
          res.end(body)
        })
        return
      }
      res.writeHead(r.statusCode ?? 502, r.headers)
      r.pipe(res)
    })
    up.on('error', err => { res.writeHead(502); res.end(String(err)) })
    req.pipe(up)
  }
  front.server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', `http://${front.host}`)
    if (url.pathname === '/token') {
      const auth = req.headers.authorization
      const basic = auth?.startsWith('Basic ') === true ? Buffer.from(auth.slice(6), 'base64').toString() : undefined
      const scopes = url.searchParams.getAll('scope')
      front.tokenRequests.push({ service: url.searchParams.get('service'), scopes, basic })
      if (basic !== USER) { res.writeHead(401, { 'content-type': 'application/json' }); res.end('{"details":"bad credentials"}'); return }
      if (url.searchParams.get('service') !== SERVICE || scopes.length === 0 || !scopes.every(s => /^repository:[a-z0-9/._-]+:(pull|push|pull,push)$/.test(s))) {
        res.writeHead(400); res.end('bad token request'); return
      }
      const token = randomBytes(16).toString('hex')
      tokens.set(token, scopes)
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ token, expires_in: 300, ...(front.hugeToken ? { padding: 'x'.repeat(1024 * 1024) } : {}) }))
      return
    }
    if (url.pathname.startsWith('/_blob/')) { proxy(req, res, url.pathname.slice('/_blob'.length) + url.search); return }
    const m = /^\/v2\/(.+?)\/(manifests|blobs|tags)\//.exec(url.pathname)
    const repo = m?.[1]
    const action = req.method === 'GET' || req.method === 'HEAD' ? 'pull' : 'push'
    if (front.basicOnly) {
      const auth = req.headers.authorization
      if (auth === undefined || !auth.startsWith('Basic ') || Buffer.from(auth.slice(6), 'base64').toString() !== USER) {
        req.resume()
        res.writeHead(401, { 'www-authenticate': 'Basic realm="guoce test"', 'content-type': 'application/json' })
        res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')
        return
      }
      front.seen.push(`${req.method} ${url.pathname}`)
      proxy(req, res, url.pathname + url.search)
      return
    }
    const token = req.headers.authorization?.startsWith('Bearer ') === true ? req.headers.authorization.slice(7) : undefined
    const granted = token !== undefined ? tokens.get(token) : undefined
    const ok = granted !== undefined && (repo === undefined || granted.some(s => {
      const [, r, acts] = s.split(':') as [string, string, string]
      return r === repo && acts.split(',').includes(action)
    }))
    if (!ok) {
      const scope = repo !== undefined ? `,scope="repository:${repo}:${action === 'pull' ? 'pull' : 'pull,push'}"` : ''
      req.resume()
      res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${front.host}/token",service="${SERVICE}"${scope}`, 'content-type': 'application/json' })
      res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')
      return
    }
    front.seen.push(`${req.method} ${url.pathname}`)
    if (action === 'push' && repo?.startsWith('readonly') === true) {
      req.resume()
      res.writeHead(403, { 'content-type': 'application/json' })
      res.end('{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}')
      return
    }
    if (req.method === 'GET' && m?.[2] === 'blobs') {
      front.redirects++
      res.writeHead(307, { location: `/_blob${url.pathname}` })
      res.end()
      return
    }
    proxy(req, res, url.pathname + url.search)
  })
  await new Promise<void>(resolve => front.server.listen(0, '127.0.0.1', resolve))
  front.host = `127.0.0.1:${(front.server.address() as AddressInfo).port}`
  return front
}

async function skopeoManifest (ref: string): Promise<Manifest> {
  const { stdout } = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', ref])
  return JSON.parse(stdout) as Manifest
}

describe('docker:// sources and targets (OCI distribution API)', () => {
  let work: string
  let reg: { proc: ChildProcess, host: string } | undefined
  let front: Front | undefined
  const w = (p: string): string => join(work, p)
  let R = ''
  let ociDigest = ''

  beforeAll(async () => {
    await requireTools('umoci', 'skopeo')
    try {
      await run('sh', ['-c', 'command -v docker-registry'])
    } catch {
      throw new Error('required tool docker-registry is not installed (Debian package docker-registry)')
    }
    work = await tempDir('registry')
    reg = await startRegistry(w('registry'))
    R = reg.host
    // a 2-layer image: busybox + repeated random data, then an edit and a deletion
    await run('umoci', ['init', '--layout', w('src')])
    await run('umoci', ['new', '--image', `${w('src')}:v1`])
    await run('umoci', ['unpack', '--image', `${w('src')}:v1`, w('b1')])
    await mkdir(w('b1/rootfs/bin'), { recursive: true })
    await copyFile('/bin/busybox', w('b1/rootfs/bin/busybox'))
    const data = randomBytes(600 * 1024)
    await writeFile(w('b1/rootfs/data-a'), data)
    await writeFile(w('b1/rootfs/data-b'), data)
    await writeFile(w('b1/rootfs/hello.txt'), 'hello\n')
    await run('umoci', ['repack', '--image', `${w('src')}:v1`, w('b1')])
    await run('umoci', ['unpack', '--image', `${w('src')}:v1`, w('b2')])
    await run('sh', ['-c', `set -e; R=${w('b2/rootfs')}; rm "$R/data-b"; printf 'changed\\n' > "$R/hello.txt"`])
    await run('umoci', ['repack', '--image', `${w('src')}:v1`, w('b2')])
    await run('skopeo', ['copy', '--dest-tls-verify=false', `oci:${w('src')}:v1`, `docker://${R}/src:v1`])
    ociDigest = (await convertImage(`oci:${w('src')}:v1`, `oci:${w('ref')}:v1`, { chunkSize: 64 * 1024 })).manifestDigest
  })
  afterAll(async () => {
    if (front !== undefined) await new Promise<void>(resolve => { front!.server.closeAllConnections(); front!.server.close(() => { resolve() }) })
    if (reg !== undefined && reg.proc.exitCode === null) {
      const exited = new Promise<void>(resolve => reg!.proc.once('exit', () => { resolve() }))
      reg.proc.kill('SIGKILL')
      await exited
    }
    if (work !== undefined) await cleanup(work)
  })

  it('parses docker:// references and challenges', () => {
    expect(parseDockerRef('docker://127.0.0.1:5000/a/b:v1')).toEqual({ registry: '127.0.0.1:5000', repository: 'a/b', tag: 'v1', digest: undefined })
    expect(parseDockerRef('docker://localhost/b')).toEqual({ registry: 'localhost', repository: 'b', tag: 'latest', digest: undefined })
    const d = 'sha256:' + 'a'.repeat(64)
    expect(parseDockerRef(`docker://r.example.com/b@${d}`)).toEqual({ registry: 'r.example.com', repository: 'b', tag: undefined, digest: d })
    for (const bad of ['docker://x/y:z', 'docker://r.io/', 'docker://r.io/Up:v1', 'docker://r.io/a@sha256:12', 'docker://r.io/a:b/c']) {
      expect(() => parseDockerRef(bad), bad).toThrow(InvalidImageRefError)
    }
    expect(parseChallenge('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"')).toEqual({
      scheme: 'bearer', params: { realm: 'https://auth.example/token', service: 'registry.example', scope: 'repository:a/b:pull,push' }
    })
    expect(parseChallenge('Basic realm="Registry Realm"')).toEqual({ scheme: 'basic', params: { realm: 'Registry Realm' } })
    expect(new RegistryClient('127.0.0.1:5000').base).toBe('http://127.0.0.1:5000')
    expect(new RegistryClient('localhost:5000').base).toBe('http://localhost:5000')
    expect(new RegistryClient('r.example.com').base).toBe('https://r.example.com')
    expect(new RegistryClient('r.example.com', { plainHttp: true }).base).toBe('http://r.example.com')
  })

  it('converts docker:// -> docker://, and skopeo reads back a valid lazy image', async () => {
    const res = await convertImage(`docker://${R}/src:v1`, `docker://${R}/lazy:v1`, { chunkSize: 64 * 1024, tempDir: w('') })
    expect(res.layers).toHaveLength(2)
    expect(res.manifestDigest).toBe(ociDigest) // same bytes in, same image out: the registry path changes nothing
    await run('skopeo', ['copy', '--src-tls-verify=false', `docker://${R}/lazy:v1`, `oci:${w('out')}:v1`])
    const checked = await checkImageRef(`oci:${w('out')}:v1`)
    expect(checked).toHaveLength(2)
    const { manifest, descriptor } = await readManifest(parseOciRef(`oci:${w('out')}:v1`))
    expect(descriptor.digest).toBe(res.manifestDigest)
    expect(manifest.layers.length).toBeGreaterThanOrEqual(3)
    for (const l of manifest.layers) expect(OURS.has(l.mediaType), l.mediaType).toBe(true)
    expect(await skopeoManifest(`docker://${R}/lazy:v1`)).toEqual(res.manifest)
    // staging layouts are gone
    expect((await readdir(work)).filter(n => n.startsWith('guoce-'))).toEqual([])
  })

  it('converts docker://...@sha256 -> oci:, and an index resolves to linux/amd64', async () => {
    const { stdout } = await run('skopeo', ['inspect', '--tls-verify=false', '--format', '{{.Digest}}', `docker://${R}/src:v1`])
    const digest = stdout.trim()
    const res = await convertImage(`docker://${R}/src@${digest}`, `oci:${w('from-digest')}:v1`, { chunkSize: 64 * 1024 })
    expect(res.manifestDigest).toBe(ociDigest)
    expect(await checkImageRef(`oci:${w('from-digest')}:v1`)).toHaveLength(2)

    // an index whose first entry is another platform (the lazy image), then linux/amd64 (the source)
    const client = new RegistryClient(R)
    const src = await client.getManifest('src', digest)
    const other = await client.getManifest('lazy', 'v1')
    // both manifests and their blobs into repository multi, then an index over them
    await run('skopeo', ['copy', '--src-tls-verify=false', '--dest-tls-verify=false', `docker://${R}/lazy:v1`, `docker://${R}/multi:arm`])
    await run('skopeo', ['copy', '--src-tls-verify=false', '--dest-tls-verify=false', `docker://${R}/src:v1`, `docker://${R}/multi:amd`])
    const index = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        { mediaType: other.mediaType, digest: other.digest, size: other.bytes.length, platform: { os: 'linux', architecture: 'arm64' } },
        { mediaType: src.mediaType, digest: src.digest, size: src.bytes.length, platform: { os: 'linux', architecture: 'amd64' } }
      ]
    }))
    await client.putManifest('multi', 'v1', index, 'application/vnd.oci.image.index.v1+json')
    const viaIndex = await convertImage(`docker://${R}/multi:v1`, `oci:${w('from-index')}:v1`, { chunkSize: 64 * 1024 })
    expect(viaIndex.manifestDigest).toBe(ociDigest)
  })

  it('converts a Docker v2 schema 2 source (docker manifest and config media types)', async () => {
    await run('skopeo', ['copy', '--dest-tls-verify=false', '--format', 'v2s2', `oci:${w('src')}:v1`, `docker://${R}/v2s2:v1`])
    const raw = await skopeoManifest(`docker://${R}/v2s2:v1`)
    expect(raw.mediaType).toBe('application/vnd.docker.distribution.manifest.v2+json')
    const res = await convertImage(`docker://${R}/v2s2:v1`, `docker://${R}/v2s2-lazy:v1`, { chunkSize: 64 * 1024 })
    expect(res.layers).toHaveLength(2)
    expect(res.manifest.config.mediaType).toBe('application/vnd.oci.image.config.v1+json')
    await run('skopeo', ['copy', '--src-tls-verify=false', `docker://${R}/v2s2-lazy:v1`, `oci:${w('v2s2-out')}:v1`])
    expect(await checkImageRef(`oci:${w('v2s2-out')}:v1`)).toHaveLength(2)
  })

  it('takes docker:// chunk dictionaries', async () => {
    const res = await convertImage(`docker://${R}/src:v1`, `oci:${w('with-dict')}:v1`, { chunkSize: 64 * 1024, chunkDict: [`docker://${R}/lazy:v1`] })
    for (const l of res.layers) {
      expect(l.blobDigest).toBeUndefined() // every chunk is in the dictionary image
      expect(l.stats.unique).toBe(0)
    }
    expect(await checkImageRef(`oci:${w('with-dict')}:v1`)).toHaveLength(2)
  })

  it('converts oci: -> docker://', async () => {
    const res = await convertImage(`oci:${w('src')}:v1`, `docker://${R}/pushed:v2`, { chunkSize: 64 * 1024 })
    expect(res.manifestDigest).toBe(ociDigest)
    expect(await skopeoManifest(`docker://${R}/pushed:v2`)).toEqual(res.manifest)
    await run('skopeo', ['copy', '--src-tls-verify=false', `docker://${R}/pushed:v2`, `oci:${w('pushed-out')}:v2`])
    expect(await checkImageRef(`oci:${w('pushed-out')}:v2`)).toHaveLength(2)
  })

  it('names 404s and refuses bad references before any traffic', async () => {
    await expect(convertImage(`docker://${R}/nope:v1`, `oci:${w('nope')}:v1`)).rejects.toMatchObject({ name: 'RegistryNotFoundError', code: 'ERR_REGISTRY_NOT_FOUND' })
    await expect(convertImage(`docker://${R}/src:missing`, `oci:${w('nope')}:v1`)).rejects.toThrow(/404 Not Found: MANIFEST_UNKNOWN/)
    expect(await readdir(work)).not.toContain('nope')
    await expect(convertImage(`docker://${R}/src:v1`, `docker://${R}/x@sha256:${'b'.repeat(64)}`)).rejects.toBeInstanceOf(InvalidImageRefError)
    await expect(convertImage(`docker://${R}/src:v1`, 'http://x/y')).rejects.toBeInstanceOf(InvalidImageRefError)
  })

  describe('through a token-auth front (Bearer realm demanding basic credentials)', () => {
    beforeAll(async () => { front = await startFront(R) })

    it('pulls and pushes with tokens, following blob redirects', async () => {
      const F = front!.host
      const res = await convertImage(`docker://${F}/src:v1`, `docker://${F}/lazy-auth:v1`, { chunkSize: 64 * 1024, registryAuth: USER })
      expect(res.manifestDigest).toBe(ociDigest)
      expect(front!.redirects).toBeGreaterThanOrEqual(3) // config + 2 layers, each through a 307
      expect(front!.tokenRequests).toHaveLength(2) // one per scope (pull src, pull+push lazy-auth), then cached
      for (const t of front!.tokenRequests) {
        expect(t.service).toBe(SERVICE)
        expect(t.basic).toBe(USER)
      }
      expect(front!.tokenRequests.flatMap(t => t.scopes)).toEqual(expect.arrayContaining(['repository:src:pull', 'repository:lazy-auth:pull,push']))
      expect(front!.seen.some(s => s.startsWith('PUT /v2/lazy-auth/manifests/v1'))).toBe(true)
      // read back straight from the registry, not through the front
      expect(await skopeoManifest(`docker://${R}/lazy-auth:v1`)).toEqual(res.manifest)
      await run('skopeo', ['copy', '--src-tls-verify=false', `docker://${R}/lazy-auth:v1`, `oci:${w('auth-out')}:v1`])
      expect(await checkImageRef(`oci:${w('auth-out')}:v1`)).toHaveLength(2)
    })

    it('a token service answer above MAX_TOKEN_RESPONSE_BYTES is refused before it is parsed', async () => {
      const F = front!.host
      front!.hugeToken = true
      try {
        await expect(convertImage(`docker://${F}/src:v1`, `oci:${w('huge-token')}:v1`, { chunkSize: 64 * 1024, registryAuth: USER }))
          .rejects.toThrow(new RegExp(`token service .*larger than ${MAX_TOKEN_RESPONSE_BYTES} bytes`))
      } finally {
        front!.hugeToken = false
      }
      expect(await readdir(work)).not.toContain('huge-token')
    })

    it('wrong or missing credentials fail with one clear line and push nothing', async () => {
      const F = front!.host
      const before = process.env.GUOCE_REGISTRY_AUTH
      process.env.GUOCE_REGISTRY_AUTH = 'alice:wrong'
      try {
        await expect(convertImage(`docker://${R}/src:v1`, `docker://${F}/lazy-bad:v1`, { chunkSize: 64 * 1024 }))
          .rejects.toMatchObject({ name: 'RegistryAuthError', code: 'ERR_REGISTRY_AUTH', message: expect.stringMatching(/token service .*refused the credentials in GUOCE_REGISTRY_AUTH/) })
      } finally {
        if (before === undefined) delete process.env.GUOCE_REGISTRY_AUTH
        else process.env.GUOCE_REGISTRY_AUTH = before
      }
      await expect(convertImage(`docker://${F}/src:v1`, `oci:${w('anon')}:v1`, { registryAuth: '' })).rejects.toThrow(/refused anonymous access/)
      expect(await readdir(work)).not.toContain('anon')
      expect(front!.seen.filter(s => s.includes('lazy-bad'))).toEqual([])
      const tags = await fetch(`http://${R}/v2/lazy-bad/tags/list`)
      expect(tags.status).toBe(404)

      // the CLI, as a user runs it: exit 1, one line on stderr
      const bin = resolve(import.meta.dirname, '../../cli/dist/src/bin.js')
      const r = await run(process.execPath, [bin, 'image', 'convert', '--source', `docker://${R}/src:v1`, '--target', `docker://${F}/lazy-cli:v1`], { env: { ...process.env, GUOCE_REGISTRY_AUTH: 'alice:nope' } })
        .then(() => ({ code: 0, stderr: '' }), (e: { code: number, stderr: string }) => e)
      expect(r.code).not.toBe(0)
      const lines = r.stderr.trim().split('\n')
      expect(lines).toHaveLength(1)
      expect(lines[0]).toMatch(/^guoce: error: .*refused the credentials/)
      expect((await fetch(`http://${R}/v2/lazy-cli/tags/list`)).status).toBe(404)
    })

    it('names a 403 and pushes nothing', async () => {
      await expect(convertImage(`docker://${R}/src:v1`, `docker://${front!.host}/readonly:v1`, { registryAuth: USER }))
        .rejects.toMatchObject({ name: 'RegistryDeniedError', code: 'ERR_REGISTRY_DENIED', message: expect.stringMatching(/: POST \/v2\/readonly\/blobs\/uploads\/: 403 Forbidden: DENIED requested access to the resource is denied$/) })
      expect((await fetch(`http://${R}/v2/readonly/tags/list`)).status).toBe(404)
    })

    it('answers Basic challenges with the credentials, and names missing or wrong ones', async () => {
      const F = front!.host
      front!.basicOnly = true
      try {
        const res = await convertImage(`docker://${F}/src:v1`, `docker://${F}/lazy-basic:v1`, { chunkSize: 64 * 1024, registryAuth: USER })
        expect(res.manifestDigest).toBe(ociDigest)
        expect(front!.seen).toContain('PUT /v2/lazy-basic/manifests/v1')
        await expect(convertImage(`docker://${F}/src:v1`, `oci:${w('basic-anon')}:v1`, { registryAuth: '' }))
          .rejects.toMatchObject({ name: 'RegistryAuthError', message: expect.stringMatching(/401 Unauthorized: basic credentials required \(set GUOCE_REGISTRY_AUTH=user:pass\)/) })
        await expect(convertImage(`docker://${R}/src:v1`, `docker://${F}/lazy-basic-bad:v1`, { registryAuth: 'alice:wrong' }))
          .rejects.toMatchObject({ name: 'RegistryAuthError', message: expect.stringMatching(/401 Unauthorized.*credentials refused/) })
      } finally {
        front!.basicOnly = false
      }
      expect((await fetch(`http://${R}/v2/lazy-basic-bad/tags/list`)).status).toBe(404)
      expect(await skopeoManifest(`docker://${R}/lazy-basic:v1`)).toEqual((await readManifest(parseOciRef(`oci:${w('ref')}:v1`))).manifest)
    })

    it('refuses blobs whose bytes do not match their descriptor, leaving no output', async () => {
      const F = front!.host
      front!.corruptBlobs = true
      try {
        await expect(convertImage(`docker://${F}/src:v1`, `oci:${w('corrupt')}:v1`, { registryAuth: USER, tempDir: w('') }))
          .rejects.toMatchObject({ name: 'RegistryDigestMismatchError', code: 'ERR_REGISTRY_DIGEST', message: expect.stringMatching(/blob sha256:[0-9a-f]{64}: bytes hash to sha256:/) })
      } finally {
        front!.corruptBlobs = false
      }
      expect((await readdir(work)).filter(n => n === 'corrupt' || n.startsWith('guoce-'))).toEqual([])
    })
  })

  it('a registry that is not there is a RegistryError naming it', async () => {
    const dead = createServer()
    await new Promise<void>(resolve => dead.listen(0, '127.0.0.1', resolve))
    const port = (dead.address() as AddressInfo).port
    await new Promise<void>(resolve => dead.close(() => { resolve() }))
    await expect(convertImage(`docker://127.0.0.1:${port}/src:v1`, `oci:${w('dead')}:v1`)).rejects.toMatchObject({ name: 'RegistryError', message: expect.stringContaining(`127.0.0.1:${port}`) })
  })

  it('the registry holds what the tests pushed', async () => {
    const cat = await (await fetch(`http://${R}/v2/_catalog`)).json() as { repositories: string[] }
    expect(cat.repositories).toEqual(expect.arrayContaining(['src', 'lazy', 'pushed', 'lazy-auth', 'multi']))
    expect(cat.repositories).not.toContain('lazy-bad')
    expect(JSON.parse(await readFile(join(w('out'), 'index.json'), 'utf8')).manifests).toHaveLength(1)
  })
})
