/**
 * Real registry-side components for cross-process tests: the Debian distribution registry
 * (`docker-registry serve`, optionally with htpasswd auth, its request log kept), a containerd of its own
 * (own root, state, sockets; CRI off), and an OCI image layout built by hand (tar + gzip, no internet).
 * Everything started here is stopped by `stopRegistries()` (register it in afterEach/afterAll).
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { createHash, createPrivateKey, randomBytes, sign, X509Certificate } from 'node:crypto'
import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { mkdir, writeFile, readFile, copyFile } from 'node:fs/promises'
import { statSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { until } from './wait.js'

const exec = promisify(execFile)
const live = new Set<ChildProcess>()

/** a file's size, undefined when it is not there */
function sizeOf (path: string): number | undefined {
  try { return statSync(path).size } catch { return undefined }
}

export interface Registry {
  /** 127.0.0.1:PORT */
  host: string
  /** where the filesystem driver keeps blobs */
  data: string
  /** stderr lines (the request log) */
  log: string[]
  proc: ChildProcess
  /**
   * How many times the content at this path (e.g. /v2/demo/blobs/sha256:...) left the registry: for a blob,
   * the bytes of every GET answer (200 or 206: a seed fetches in Range runs) over the blob's size, to 0.01;
   * for anything else, the GETs answered 200.
   */
  gets(path: string): number
  /** the file holding a blob's (or manifest's) bytes in the registry's storage */
  blobFile(digest: string): string
  /** kill it (SIGKILL) and wait for its exit */
  stop(): Promise<void>
}

/**
 * `docker-registry serve` on 127.0.0.1 (kernel-chosen port), or on `addr` inside network namespace `netns`;
 * `htpasswd` makes every repository private.
 */
export async function startRegistry (dir: string, o: { htpasswd?: { user: string, password: string }, token?: TokenServer, addr?: string, netns?: string } = {}): Promise<Registry> {
  const data = join(dir, 'data')
  await mkdir(data, { recursive: true })
  const auth: string[] = []
  if (o.htpasswd != null) {
    const { stdout } = await exec('htpasswd', ['-Bbn', o.htpasswd.user, o.htpasswd.password])
    await writeFile(join(dir, 'htpasswd'), stdout)
    auth.push('auth:', '  htpasswd:', '    realm: guoce-test', `    path: ${join(dir, 'htpasswd')}`)
  }
  if (o.token != null) {
    auth.push('auth:', '  token:', `    realm: ${o.token.realm}`, `    service: ${o.token.service}`, `    issuer: ${o.token.issuer}`, `    rootcertbundle: ${o.token.certFile}`)
  }
  const cfg = join(dir, 'config.yml')
  await writeFile(cfg, [
    'version: 0.1', 'log:', '  level: info', '  accesslog:', '    disabled: true',
    'storage:', '  filesystem:', `    rootdirectory: ${data}`,
    'http:', `  addr: ${o.addr ?? '127.0.0.1:0'}`, `  secret: ${randomBytes(16).toString('hex')}`, ...auth
  ].join('\n') + '\n')
  const proc = spawnIn(o.netns, 'docker-registry', ['serve', cfg])
  const log: string[] = []
  let buf = ''
  proc.stderr!.on('data', (d: Buffer) => {
    buf += d.toString()
    const lines = buf.split('\n'); buf = lines.pop() ?? ''
    log.push(...lines)
  })
  let host = ''
  await until(() => { const m = /listening on ([0-9.]+:\d+)/.exec(log.join('\n')); if (m?.[1] != null) host = m[1]; return host !== '' || proc.exitCode != null }, 'docker-registry to listen', 10_000)
  if (host === '') throw new Error(`docker-registry exited: ${log.join('\n')}`)
  return {
    host, data, log, proc,
    gets: (path) => {
      const answers = log.filter(l => l.includes('response completed') && l.includes('http.request.method=GET') && l.includes(`http.request.uri="${path}"`))
      const m = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(path)
      const size = m != null ? sizeOf(join(data, 'docker/registry/v2/blobs/sha256', m[1]!.slice(7, 9), m[1]!.slice(7), 'data')) : undefined
      if (size == null || size === 0) return answers.filter(l => l.includes('http.response.status=200')).length
      const bytes = answers.filter(l => /http\.response\.status=20[06]/.test(l)).reduce((n, l) => n + Number(/http\.response\.written=(\d+)/.exec(l)?.[1] ?? 0), 0)
      return Math.round(bytes / size * 100) / 100
    },
    blobFile: (digest) => { const hex = digest.slice('sha256:'.length); return join(data, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data') },
    stop: async () => {
      if (proc.exitCode != null || proc.signalCode != null) return
      proc.kill('SIGKILL')
      await new Promise(resolve => proc.once('exit', resolve))
    }
  }
}

export interface PullContainerd {
  dir: string
  address: string
  /** `ctr -a ADDRESS -n guoce ARGS` (in the containerd's namespace) */
  ctr(args: string[], o?: { timeoutMs?: number }): Promise<{ stdout: string, stderr: string }>
}

export interface TokenServer {
  realm: string
  service: string
  issuer: string
  /** the certificate the registry trusts (PEM) */
  certFile: string
  /** tokens issued, by whom: 'anonymous' or the user */
  issued: string[]
  close(): Promise<void>
}

/**
 * A registry token service (the Bearer flow of the distribution spec; Docker Hub, Harbor and GHCR have one):
 * JWTs signed RS256 with a self-signed certificate (openssl) that the registry trusts (`x5c` header).
 * Anonymous callers get `pull` on repositories under `public/` only; `user:password` (Basic) gets pull and
 * push on every scope asked.
 */
export async function startTokenServer (dir: string, user: { user: string, password: string }): Promise<TokenServer> {
  await mkdir(dir, { recursive: true })
  const keyFile = join(dir, 'token.key'); const certFile = join(dir, 'token.pem')
  await exec('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=guoce-test-token'])
  const key = createPrivateKey(await readFile(keyFile))
  const der = new X509Certificate(await readFile(certFile)).raw.toString('base64')
  const service = 'guoce-test-registry'; const issuer = 'guoce-test-issuer'
  const issued: string[] = []
  const b64 = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url')
  const answer = (res: ServerResponse, who: string | undefined, scopes: string[]): void => {
    if (who != null && who !== `${user.user}:${user.password}`) { res.writeHead(401); res.end(); return }
    const access = scopes.map(s => s.split(':')).filter(p => p.length === 3 && p[0] === 'repository').map(([type, name, actions]) => ({
      type, name, actions: who != null ? actions!.split(',') : name!.startsWith('public/') ? actions!.split(',').filter(a => a === 'pull') : []
    }))
    const now = Math.floor(Date.now() / 1000)
    const head = b64({ typ: 'JWT', alg: 'RS256', x5c: [der] })
    const body = b64({ iss: issuer, sub: who?.split(':')[0] ?? '', aud: service, exp: now + 300, nbf: now - 10, iat: now, jti: randomBytes(8).toString('hex'), access })
    const token = `${head}.${body}.${sign('sha256', Buffer.from(`${head}.${body}`), key).toString('base64url')}`
    issued.push(who != null ? user.user : 'anonymous')
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ token, access_token: token, expires_in: 300 }))
  }
  // GET with Basic (or nothing), and the OAuth2 password grant (POST form) that containerd tries first
  const server = createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x')
    if (req.method === 'POST') {
      let form = ''
      req.on('data', (d: Buffer) => { if (form.length < 65536) form += d.toString() })
      req.on('end', () => {
        const f = new URLSearchParams(form)
        const who = f.get('grant_type') === 'password' ? `${f.get('username') ?? ''}:${f.get('password') ?? ''}` : undefined
        answer(res, who, (f.get('scope') ?? '').split(' ').filter(Boolean))
      })
      return
    }
    const basic = /^Basic (.+)$/.exec(req.headers.authorization ?? '')?.[1]
    answer(res, basic != null ? Buffer.from(basic, 'base64').toString() : undefined, u.searchParams.getAll('scope'))
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const realm = `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`
  return { realm, service, issuer, certFile, issued, close: async () => { server.closeAllConnections(); await new Promise(resolve => server.close(resolve)) } }
}

/** A command, inside network namespace `netns` when given (`ip netns exec` execs it: the child is the command). */
function spawnIn (netns: string | undefined, cmd: string, args: string[]): ChildProcess {
  const proc = netns != null ? spawn('ip', ['netns', 'exec', netns, cmd, ...args], { stdio: ['ignore', 'ignore', 'pipe'] }) : spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  live.add(proc)
  proc.once('exit', () => live.delete(proc))
  return proc
}

/** A containerd with its own root, state and sockets under `dir` (CRI off; in `netns` when given), ready to answer. */
export async function startPullContainerd (dir: string, o: { netns?: string } = {}): Promise<PullContainerd> {
  await mkdir(dir, { recursive: true })
  const address = join(dir, 'c.sock')
  const cfg = join(dir, 'config.toml')
  await writeFile(cfg, [
    'version = 2', `root = "${join(dir, 'root')}"`, `state = "${join(dir, 'state')}"`,
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
    '[grpc]', `  address = "${address}"`, '[ttrpc]', `  address = "${join(dir, 'c.ttrpc')}"`, '[debug]', `  address = "${join(dir, 'd.sock')}"`,
    '[plugins."io.containerd.internal.v1.opt"]', `  path = "${join(dir, 'opt')}"`
  ].join('\n') + '\n')
  const netns = o.netns
  const proc = spawnIn(netns, 'containerd', ['--config', cfg])
  const err: string[] = []
  proc.stderr!.on('data', (d: Buffer) => { if (err.length < 200) err.push(d.toString()) })
  const ctr = async (args: string[], o: { timeoutMs?: number } = {}): Promise<{ stdout: string, stderr: string }> =>
    // ctr itself fetches what `images pull` names: it runs in the namespace too
    await exec(netns != null ? 'ip' : 'ctr', [...(netns != null ? ['netns', 'exec', netns, 'ctr'] : []), '-a', address, '-n', 'guoce', ...args], { timeout: o.timeoutMs ?? 120_000, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024 })
  await until(async () => { if (proc.exitCode != null) throw new Error(`containerd exited: ${err.join('')}`); try { await ctr(['version'], { timeoutMs: 5_000 }); return true } catch { return false } }, 'containerd to answer', 20_000, 100)
  return { dir, address, ctr }
}

/** Stop every registry and containerd started here. */
export async function stopRegistries (): Promise<void> {
  await Promise.all([...live].map(async p => {
    const exited = new Promise(resolve => p.once('exit', resolve))
    p.kill('SIGTERM')
    const t = setTimeout(() => p.kill('SIGKILL'), 5_000)
    await exited
    clearTimeout(t)
  }))
}

export interface BuiltImage {
  /** the OCI layout directory (tag `tag`) */
  layout: string
  manifestDigest: string
  configDigest: string
  layers: Array<{ digest: string, size: number }>
}

const sha = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

/**
 * An OCI image layout built by hand: one gzip layer per entry of `layers` (each a map of file path to
 * bytes, or to a file to copy), a config with their diff ids, a manifest, tagged `tag`.
 */
export async function buildImage (dir: string, layers: Array<Record<string, Buffer | { copy: string }>>, tag = 'v1'): Promise<BuiltImage> {
  const blobs = join(dir, 'layout', 'blobs', 'sha256')
  await mkdir(blobs, { recursive: true })
  const put = async (b: Buffer): Promise<string> => { const d = sha(b); await writeFile(join(blobs, d.slice(7)), b); return d }
  const descs: Array<{ digest: string, size: number }> = []
  const diffIds: string[] = []
  for (const [i, files] of layers.entries()) {
    const root = join(dir, `layer-${i}`)
    for (const [path, body] of Object.entries(files)) {
      const to = join(root, path)
      await mkdir(join(to, '..'), { recursive: true })
      if (Buffer.isBuffer(body)) await writeFile(to, body)
      else { await copyFile(body.copy, to); await exec('chmod', ['0755', to]) }
    }
    const tarFile = join(dir, `layer-${i}.tar`)
    await exec('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '-C', root, '-cf', tarFile, '.'])
    const tar = await readFile(tarFile)
    diffIds.push(sha(tar))
    await exec('gzip', ['-n', '-f', tarFile])
    const gz = await readFile(tarFile + '.gz')
    descs.push({ digest: await put(gz), size: gz.length })
  }
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/busybox', 'true'] }, rootfs: { type: 'layers', diff_ids: diffIds } }))
  const configDigest = await put(config)
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
    layers: descs.map(d => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...d }))
  }))
  const manifestDigest = await put(manifest)
  await writeFile(join(dir, 'layout', 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))
  await writeFile(join(dir, 'layout', 'index.json'), JSON.stringify({
    schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: manifestDigest, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': tag } }]
  }))
  return { layout: join(dir, 'layout'), manifestDigest, configDigest, layers: descs }
}

/** Push an OCI layout's tag to `docker://HOST/REPO:TAG` with skopeo (plain http; from inside `netns` when given). */
export async function pushImage (layout: string, tag: string, dest: string, creds?: string, netns?: string): Promise<void> {
  await exec(netns != null ? 'ip' : 'skopeo', [...(netns != null ? ['netns', 'exec', netns, 'skopeo'] : []), 'copy', '--quiet', '--dest-tls-verify=false', ...(creds != null ? ['--dest-creds', creds] : []), `oci:${layout}:${tag}`, `docker://${dest}`], { timeout: 120_000 })
}
