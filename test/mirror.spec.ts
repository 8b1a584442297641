/**
 * The registry mirror end to end (issue 12): the Debian distribution registry (`docker-registry`), a loopback
 * cluster (scheduler, one designated seed, daemons each serving a mirror), one containerd 1.6 per daemon
 * pulling through its own mirror via hosts.toml (written by `guoce mirror hosts`), and skopeo. The images are
 * built by hand (tar + gzip) from busybox-static and random bytes.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { randomBytes, createHash } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { createServer, request as httpRequest } from 'node:http'
import type { AddressInfo } from 'node:net'
import {
  startCluster, stopAll, runGuoce, startRegistry, startTokenServer, startPullContainerd, stopRegistries, buildImage, pushImage, freePort,
  type Cluster, type Registry, type PullContainerd, type BuiltImage
} from '@guoce/testkit'

const exec = promisify(execFile)
const MiB = 1024 * 1024
const USER = 'alice'
const PASSWORD = 's3cret-' + randomBytes(4).toString('hex')
const BASIC = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`
const sha = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

let dir: string
let pub: Registry
let priv: Registry
let cluster: Cluster
let image: BuiltImage
let small: BuiltImage
let secret: BuiltImage
const nodes: Array<{ mirror: string, api: string, ctrd: PullContainerd, hosts: string }> = []

async function metric (api: string, name: string): Promise<number> {
  const text = await (await fetch(`${api}/metrics`)).text()
  const line = text.split('\n').find(l => l.startsWith(name + ' ') || l.startsWith(name + '{'))
  return line == null ? 0 : Number(line.split(' ').pop())
}

/** the OCI error body of a mirror answer */
async function ociCode (res: Response): Promise<string> {
  const j = await res.json() as { errors?: Array<{ code: string }> }
  return j.errors?.[0]?.code ?? ''
}

/**
 * A slow link in front of the registry: every response body goes out at `rate` bytes/s (the registry itself
 * answers); `sent` counts the body bytes that went through.
 */
async function throttle (target: string, rate: number): Promise<{ host: string, sent: () => number, close: () => Promise<void> }> {
  let sent = 0
  const server = createServer((req, res) => {
    const up = httpRequest({ host: target.split(':')[0], port: Number(target.split(':')[1]), path: req.url, method: req.method, headers: req.headers }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers)
      void (async () => {
        const t0 = Date.now(); let n = 0
        for await (const c of ur as AsyncIterable<Buffer>) {
          for (let off = 0; off < c.length; off += 16 * 1024) {
            const part = c.subarray(off, off + 16 * 1024)
            n += part.length
            const wait = t0 + n * 1000 / rate - Date.now()
            if (wait > 0) await new Promise(resolve => setTimeout(resolve, wait))
            if (res.destroyed) return
            sent += part.length
            if (!res.write(part)) await new Promise(resolve => res.once('drain', resolve))
          }
        }
        res.end()
      })().catch(() => { res.destroy() })
    })
    up.on('error', () => { res.destroy() })
    req.pipe(up)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`
  return { host, sent: () => sent, close: async () => { server.closeAllConnections(); await new Promise(resolve => server.close(resolve)) } }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'guoce-mirror-'))
  pub = await startRegistry(join(dir, 'reg-public'))
  priv = await startRegistry(join(dir, 'reg-private'), { htpasswd: { user: USER, password: PASSWORD } })
  // three layers: busybox, 12 MiB of random bytes (several pieces), a small file
  image = await buildImage(join(dir, 'img'), [
    { 'bin/busybox': { copy: '/bin/busybox' } },
    { 'data/random.bin': randomBytes(12 * MiB) },
    { 'etc/hello.txt': Buffer.from('hello from guoce\n') }
  ])
  small = await buildImage(join(dir, 'small'), [{ 'etc/small.txt': randomBytes(4096) }])
  await pushImage(image.layout, 'v1', `${pub.host}/demo/app:v1`)
  await pushImage(small.layout, 'v1', `${pub.host}/demo/small:v1`)
  // the private image has blobs of its own (a blob that is public elsewhere is served from the shared task)
  secret = await buildImage(join(dir, 'secret'), [{ 'bin/busybox': { copy: '/bin/busybox' } }, { 'data/secret.bin': randomBytes(3 * MiB) }])
  await pushImage(secret.layout, 'v1', `${priv.host}/secret/app:v1`, `${USER}:${PASSWORD}`)
  // debug logs, to check that no credential reaches any of them
  const level = process.env.GUOCE_TEST_LOG
  process.env.GUOCE_TEST_LOG = 'debug'
  cluster = await startCluster({ daemons: 0 })
  for (let i = 0; i < 3; i++) {
    // the first mirror also has a default upstream, for clients that name none (skopeo); the third a small manifest cap
    const d = await cluster.addDaemon(['--mirror', '127.0.0.1:0', ...(i === 0 ? ['--mirror-upstream', pub.host] : []), ...(i === 2 ? ['--mirror-max-manifest', '64KiB'] : [])])
    const mirror = d.ready.mirror as string
    expect(mirror).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
    const hosts = join(dir, `certs-${i}`)
    for (const reg of [pub.host, priv.host]) {
      const r = await runGuoce(['mirror', 'hosts', '--registry', reg, '--dir', hosts, '--mirror', mirror.replace('http://', '')])
      expect(r.code, r.stderr).toBe(0)
    }
    nodes.push({ mirror, api: d.api, ctrd: await startPullContainerd(join(dir, `ctrd-${i}`)), hosts })
  }
  if (level == null) delete process.env.GUOCE_TEST_LOG; else process.env.GUOCE_TEST_LOG = level
}, 180_000)

afterAll(async () => {
  await stopAll()
  await stopRegistries()
  await cluster?.close().catch(() => {})
  if (dir != null) await rm(dir, { recursive: true, force: true })
})

describe('registry mirror', () => {
  it('writes the hosts.toml containerd reads', async () => {
    const text = await readFile(join(nodes[0]!.hosts, pub.host, 'hosts.toml'), 'utf8')
    expect(text).toContain(`server = "http://${pub.host}"`)
    expect(text).toContain(`[host."${nodes[0]!.mirror}"]`)
    expect(text).toContain('capabilities = ["pull", "resolve"]')
  })

  it('must-hold 1: three nodes pull one multi-layer image through their mirrors; each blob leaves the registry once', async () => {
    const ref = `${pub.host}/demo/app:v1`
    await Promise.all(nodes.map(async n => await n.ctrd.ctr(['images', 'pull', '--hosts-dir', n.hosts, ref])))
    // a direct pull (no mirror) on the first node's containerd, under another name, for comparison
    const direct = join(dir, 'ctrd-direct')
    const ctrd = await startPullContainerd(direct)
    await ctrd.ctr(['images', 'pull', '--plain-http', ref])
    const want = (await ctrd.ctr(['images', 'ls'])).stdout.split('\n').find(l => l.startsWith(ref))
    expect(want).toContain(image.manifestDigest)
    const wantContent = (await ctrd.ctr(['content', 'ls', '-q'])).stdout.split('\n').filter(Boolean).sort()
    for (const n of nodes) {
      const line = (await n.ctrd.ctr(['images', 'ls'])).stdout.split('\n').find(l => l.startsWith(ref))
      expect(line).toContain(image.manifestDigest)
      expect((await n.ctrd.ctr(['content', 'ls', '-q'])).stdout.split('\n').filter(Boolean).sort()).toEqual(wantContent)
      // every blob came from the swarm: no mirror fell back to the upstream
      expect(await metric(n.api, 'guoce_mirror_upstream_fallbacks_total')).toBe(0)
      expect(await metric(n.api, 'guoce_mirror_blob_bytes_total')).toBeGreaterThan(12 * MiB)
    }
    expect(wantContent).toEqual([image.manifestDigest, image.configDigest, ...image.layers.map(l => l.digest)].sort())
    // the registry's log: each blob sent whole once to the swarm (the seed) and once to the direct pull
    for (const d of [image.configDigest, ...image.layers.map(l => l.digest)]) {
      expect(pub.gets(`/v2/demo/app/blobs/${d}`), d).toBe(2)
    }
  })

  it('must-hold 2: skopeo copies through the mirror (default upstream, no ns)', async () => {
    const out = join(dir, 'skopeo-out')
    const m = nodes[0]!.mirror.replace('http://', '')
    await exec('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${m}/demo/app:v1`, `oci:${out}:v1`], { timeout: 120_000 })
    const index = JSON.parse(await readFile(join(out, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> }
    expect(index.manifests[0]!.digest).toBe(image.manifestDigest)
    for (const l of image.layers) {
      const b = await readFile(join(out, 'blobs', 'sha256', l.digest.slice(7)))
      expect(sha(b)).toBe(l.digest)
    }
  })

  it('must-hold 3: a private repository: without credentials the mirror refuses, even after a node with them pulled it into the swarm', async () => {
    const ref = `${priv.host}/secret/app:v1`
    const [a, b] = [nodes[0]!, nodes[1]!]
    const credentialTasks = await metric(a.api, 'guoce_mirror_blob_tasks_total{task="credential"}')
    await a.ctrd.ctr(['images', 'pull', '--hosts-dir', a.hosts, '--user', `${USER}:${PASSWORD}`, ref])
    expect((await a.ctrd.ctr(['images', 'ls'])).stdout).toContain(secret.manifestDigest)
    // the registry gives these blobs to no anonymous reader: they came in tasks of this credential
    expect(await metric(a.api, 'guoce_mirror_blob_tasks_total{task="credential"}')).toBeGreaterThan(credentialTasks)
    for (const d of [secret.configDigest, secret.layers[1]!.digest]) expect(priv.gets(`/v2/secret/app/blobs/${d}`), d).toBe(1)
    // its busybox layer is the public image's too: once the registry confirmed this client, the shared task served it
    expect(secret.layers[0]!.digest).toBe(image.layers[0]!.digest)
    expect(priv.gets(`/v2/secret/app/blobs/${secret.layers[0]!.digest}`)).toBe(0)
    // node b without credentials: containerd is refused
    await expect(b.ctrd.ctr(['images', 'pull', '--hosts-dir', b.hosts, ref])).rejects.toThrow()
    // with wrong ones too
    await expect(b.ctrd.ctr(['images', 'pull', '--hosts-dir', b.hosts, '--user', `${USER}:wrong`, ref])).rejects.toThrow()
    const layer = secret.layers[1]!.digest
    for (const n of [a, b]) {
      // the blob is held in the swarm (node a has it): still 401 with the upstream's challenge, no byte
      const res = await fetch(`${n.mirror}/v2/secret/app/blobs/${layer}?ns=${priv.host}`)
      expect(res.status).toBe(401)
      expect(res.headers.get('www-authenticate')).toMatch(/^Basic/)
      expect(await ociCode(res)).toBe('UNAUTHORIZED')
      const wrong = await fetch(`${n.mirror}/v2/secret/app/blobs/${layer}?ns=${priv.host}`, { headers: { authorization: `Basic ${Buffer.from(`${USER}:nope`).toString('base64')}` } })
      expect(wrong.status).toBe(401)
      await wrong.arrayBuffer()
      const m = await fetch(`${n.mirror}/v2/secret/app/manifests/${secret.manifestDigest}?ns=${priv.host}`)
      expect(m.status).toBe(401)
      await m.arrayBuffer()
    }
    // with the credential, the same request is served, verified
    const ok = await fetch(`${b.mirror}/v2/secret/app/blobs/${layer}?ns=${priv.host}`, { headers: { authorization: BASIC } })
    expect(ok.status).toBe(200)
    expect(sha(new Uint8Array(await ok.arrayBuffer()))).toBe(layer)
    // and a Range of it
    const part = await fetch(`${b.mirror}/v2/secret/app/blobs/${layer}?ns=${priv.host}`, { headers: { authorization: BASIC, range: 'bytes=100-199' } })
    expect(part.status).toBe(206)
    expect(part.headers.get('content-range')).toBe(`bytes 100-199/${secret.layers[1]!.size}`)
    expect((await part.arrayBuffer()).byteLength).toBe(100)
    // the credential went to the upstream and the seed, never into a log line of any process
    const logs = [cluster.scheduler, ...cluster.seeds, ...cluster.daemons].flatMap(p => p.stderr).join('\n')
    expect(logs).toContain('secret/app')
    expect(logs).not.toContain(PASSWORD)
    expect(logs).not.toContain(BASIC.slice(6))
  })

  it('Bearer tokens (a token service): nodes with tokens of their own share the public blobs; private ones are per credential, refused without', async () => {
    const ts = await startTokenServer(join(dir, 'token'), { user: USER, password: PASSWORD })
    try {
      const tok = await startRegistry(join(dir, 'reg-token'), { token: ts })
      const pubImg = await buildImage(join(dir, 'tok-pub'), [{ 'data/a.bin': randomBytes(6 * MiB) }, { 'etc/b.txt': randomBytes(1000) }])
      const privImg = await buildImage(join(dir, 'tok-priv'), [{ 'data/c.bin': randomBytes(3 * MiB) }])
      await pushImage(pubImg.layout, 'v1', `${tok.host}/public/app:v1`, `${USER}:${PASSWORD}`)
      await pushImage(privImg.layout, 'v1', `${tok.host}/private/app:v1`, `${USER}:${PASSWORD}`)
      for (const n of nodes) {
        const r = await runGuoce(['mirror', 'hosts', '--registry', tok.host, '--dir', n.hosts, '--mirror', n.mirror.replace('http://', '')])
        expect(r.code, r.stderr).toBe(0)
      }
      const issuedBefore = ts.issued.length
      // three nodes logged in as the same user: each containerd gets its own token from the service
      await Promise.all(nodes.map(async n => await n.ctrd.ctr(['images', 'pull', '--hosts-dir', n.hosts, '--user', `${USER}:${PASSWORD}`, `${tok.host}/public/app:v1`])))
      expect(ts.issued.slice(issuedBefore).filter(w => w === USER).length).toBeGreaterThanOrEqual(3)
      for (const n of nodes) expect((await n.ctrd.ctr(['images', 'ls'])).stdout).toContain(pubImg.manifestDigest)
      // one shared task per blob, fetched by the seed with the service's anonymous token: each blob left once
      expect(ts.issued.slice(issuedBefore)).toContain('anonymous')
      for (const d of [pubImg.configDigest, ...pubImg.layers.map(l => l.digest)]) expect(tok.gets(`/v2/public/app/blobs/${d}`), d).toBe(1)
      // a client without credentials pulls the public image too (an anonymous token)
      const [a, b] = [nodes[0]!, nodes[1]!]
      await b.ctrd.ctr(['images', 'rm', `${tok.host}/public/app:v1`])
      await b.ctrd.ctr(['images', 'pull', '--hosts-dir', b.hosts, `${tok.host}/public/app:v1`])
      // the private image: with the credential on one node; its blobs in a task of that credential
      const credentialTasks = await metric(a.api, 'guoce_mirror_blob_tasks_total{task="credential"}')
      await a.ctrd.ctr(['images', 'pull', '--hosts-dir', a.hosts, '--user', `${USER}:${PASSWORD}`, `${tok.host}/private/app:v1`])
      expect(await metric(a.api, 'guoce_mirror_blob_tasks_total{task="credential"}')).toBeGreaterThan(credentialTasks)
      for (const d of [privImg.configDigest, ...privImg.layers.map(l => l.digest)]) expect(tok.gets(`/v2/private/app/blobs/${d}`), d).toBe(1)
      // without it, on the node that holds it and on another: refused
      await expect(b.ctrd.ctr(['images', 'pull', '--hosts-dir', b.hosts, `${tok.host}/private/app:v1`])).rejects.toThrow()
      for (const n of [a, b]) {
        const res = await fetch(`${n.mirror}/v2/private/app/blobs/${privImg.layers[0]!.digest}?ns=${tok.host}`)
        expect(res.status).toBe(401)
        expect(res.headers.get('www-authenticate')).toMatch(/^Bearer realm=/)
        await res.arrayBuffer()
      }
    } finally {
      await ts.close()
    }
  })

  it('a blob streams to the client as its pieces arrive, not after the whole blob', async () => {
    // a layer no node has seen, behind a 4 MiB/s link: 12 MiB take 3 s to leave the registry
    const slow = await buildImage(join(dir, 'slow'), [{ 'data/slow.bin': randomBytes(12 * MiB) }])
    await pushImage(slow.layout, 'v1', `${pub.host}/demo/slow:v1`)
    const link = await throttle(pub.host, 4 * MiB)
    try {
      const layer = slow.layers[0]!
      const res = await fetch(`${nodes[1]!.mirror}/v2/demo/slow/blobs/${layer.digest}?ns=${link.host}`)
      expect(res.status).toBe(200)
      expect(res.headers.get('content-length')).toBe(String(layer.size))
      const reader = res.body!.getReader()
      const parts: Uint8Array[] = []
      let sentAtFirst = -1
      for (let r = await reader.read(); r.done !== true; r = await reader.read()) {
        if (sentAtFirst < 0) sentAtFirst = link.sent()
        parts.push(r.value)
      }
      expect(sha(Buffer.concat(parts))).toBe(layer.digest)
      // the first bytes reached the client while most of the blob had not yet left the registry
      expect(sentAtFirst).toBeGreaterThan(0)
      expect(sentAtFirst).toBeLessThan(layer.size / 2)
      expect(await metric(nodes[1]!.api, 'guoce_mirror_upstream_fallbacks_total')).toBe(0)
    } finally {
      await link.close()
    }
  })

  it('must-hold 4: bad input gets its OCI error code, and nothing wrong is cached', async () => {
    const m = nodes[2]!.mirror
    const ns = `?ns=${pub.host}`
    const zero = `sha256:${'0'.repeat(64)}`
    // unknown digest
    let res = await fetch(`${m}/v2/demo/app/blobs/${zero}${ns}`)
    expect([res.status, await ociCode(res)]).toEqual([404, 'BLOB_UNKNOWN'])
    res = await fetch(`${m}/v2/demo/app/manifests/${zero}${ns}`)
    expect([res.status, await ociCode(res)]).toEqual([404, 'MANIFEST_UNKNOWN'])
    // malformed digests and names
    for (const bad of ['sha256:xyz', 'md5:d41d8cd98f00b204e9800998ecf8427e', `sha256:${'A'.repeat(64)}`]) {
      res = await fetch(`${m}/v2/demo/app/blobs/${bad}${ns}`)
      expect([res.status, await ociCode(res)], bad).toEqual([400, 'DIGEST_INVALID'])
      res = await fetch(`${m}/v2/demo/app/manifests/${bad}${ns}`)
      expect([res.status, await ociCode(res)], bad).toEqual([400, 'DIGEST_INVALID'])
    }
    res = await fetch(`${m}/v2/Demo/App/blobs/${zero}${ns}`)
    expect([res.status, await ociCode(res)]).toEqual([400, 'NAME_INVALID'])
    // upstream down
    const down = `127.0.0.1:${await freePort()}`
    res = await fetch(`${m}/v2/demo/app/blobs/${image.layers[0]!.digest}?ns=${down}`)
    expect([res.status, await ociCode(res)]).toEqual([503, 'UNAVAILABLE'])
    res = await fetch(`${m}/v2/demo/app/manifests/v1?ns=${down}`)
    expect([res.status, await ociCode(res)]).toEqual([503, 'UNAVAILABLE'])

    // a manifest over the size cap (this mirror's: 64 KiB; the registry itself neither takes nor serves one above
    // 4 MiB, the default cap): refused before it is read whole, by tag and by digest
    const big = Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: small.configDigest, size: (await readFile(join(small.layout, 'blobs/sha256', small.configDigest.slice(7)))).length },
      layers: [], annotations: { padding: 'x'.repeat(100 * 1024) }
    }))
    const put = await fetch(`http://${pub.host}/v2/demo/small/manifests/big`, { method: 'PUT', headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, body: big })
    expect(put.status, await put.text()).toBe(201)
    res = await fetch(`${m}/v2/demo/small/manifests/big${ns}`)
    expect([res.status, await ociCode(res)]).toEqual([502, 'SIZE_INVALID'])
    res = await fetch(`${m}/v2/demo/small/manifests/${sha(big)}${ns}`)
    expect([res.status, await ociCode(res)]).toEqual([502, 'SIZE_INVALID'])

    // the upstream sends bytes that do not match the digest: a blob, then a manifest by digest
    const layer = small.layers[0]!
    const file = pub.blobFile(layer.digest)
    const good = await readFile(file)
    const evil = Buffer.from(good); evil[evil.length >> 1]! ^= 0xff
    await writeFile(file, evil)
    const fallbacks = await metric(nodes[2]!.api, 'guoce_mirror_upstream_fallbacks_total')
    res = await fetch(`${m}/v2/demo/small/blobs/${layer.digest}${ns}`)
    expect([res.status, await ociCode(res)]).toEqual([502, 'DIGEST_INVALID'])
    // the swarm refused it (the seed's whole-digest check), so did the mirror's own fetch
    expect(await metric(nodes[2]!.api, 'guoce_mirror_upstream_fallbacks_total')).toBe(fallbacks + 1)
    const mf = pub.blobFile(small.manifestDigest)
    const goodManifest = await readFile(mf)
    await writeFile(mf, Buffer.from(goodManifest.toString().replace('"schemaVersion":2', '"schemaVersion": 2')))
    res = await fetch(`${m}/v2/demo/small/manifests/${small.manifestDigest}${ns}`)
    expect([res.status, await ociCode(res)]).toEqual([502, 'DIGEST_INVALID'])
    // the registry mends: the right bytes are served, nothing wrong was kept on the way
    await writeFile(file, good)
    await writeFile(mf, goodManifest)
    res = await fetch(`${m}/v2/demo/small/blobs/${layer.digest}${ns}`)
    expect(res.status).toBe(200)
    expect(sha(new Uint8Array(await res.arrayBuffer()))).toBe(layer.digest)
    res = await fetch(`${m}/v2/demo/small/manifests/${small.manifestDigest}${ns}`)
    expect(res.status).toBe(200)
    expect(sha(new Uint8Array(await res.arrayBuffer()))).toBe(small.manifestDigest)
    // and a whole pull of it through the mirror works
    const n = nodes[2]!
    await n.ctrd.ctr(['images', 'pull', '--hosts-dir', n.hosts, `${pub.host}/demo/small:v1`])
  })
})
