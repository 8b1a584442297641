/**
 * Issue 12, must-hold 1 in its own words: three nodes in network namespaces, each with its own containerd and
 * guoce daemon (mirror on the namespace's loopback), pull the same multi-layer image through their mirrors
 * (hosts.toml); the registry, the scheduler and the designated seed live in a fourth namespace. All succeed,
 * the images are those pushed, and the registry's log shows each blob fetched once.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import {
  startGuoce, stopAll, runGuoce, startRegistry, startPullContainerd, stopRegistries, buildImage, pushImage, createNetwork, NODE,
  type Registry, type PullContainerd, type BuiltImage, type Network
} from '@guoce/testkit'

const exec = promisify(execFile)
const MiB = 1024 * 1024
const NODES = ['n0', 'n1', 'n2']

let dir: string
let net: Network
let reg: Registry
let image: BuiltImage
const nodes: Array<{ ns: string, api: string, mirror: string, ctrd: PullContainerd, hosts: string }> = []

/** a metric of a daemon whose API is on its namespace's loopback */
async function metric (ns: string, api: string, name: string): Promise<number> {
  const { stdout } = await exec('ip', ['netns', 'exec', ns, NODE, '-e', `fetch(${JSON.stringify(api + '/metrics')}).then(r => r.text()).then(t => process.stdout.write(t))`], { timeout: 10_000 })
  const line = stdout.split('\n').find(l => l.startsWith(name + ' ') || l.startsWith(name + '{'))
  return line == null ? 0 : Number(line.split(' ').pop())
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'guoce-mirror-netns-'))
  net = createNetwork(['infra', ...NODES])
  const infra = net.ns('infra')
  reg = await startRegistry(join(dir, 'registry'), { addr: `${net.ip('infra')}:5000`, netns: infra })
  image = await buildImage(join(dir, 'img'), [
    { 'bin/busybox': { copy: '/bin/busybox' } },
    { 'data/random.bin': randomBytes(8 * MiB) },
    { 'etc/hello.txt': Buffer.from('hello from guoce\n') }
  ])
  await pushImage(image.layout, 'v1', `${reg.host}/demo/app:v1`, undefined, infra)
  const sched = await startGuoce(['scheduler', '--listen', `/ip4/${net.ip('infra')}/tcp/65003`, '--data', join(dir, 'scheduler')], { netns: infra })
  const addr = sched.ready.addr as string
  const key = sched.ready.clusterKey as string
  await startGuoce(['seed', '--scheduler', addr, '--cluster-key', key, '--seed-key', sched.ready.seedKey as string, '--data', join(dir, 'seed'), '--listen', `/ip4/${net.ip('infra')}/tcp/0`], { netns: infra })
  for (const n of NODES) {
    const ns = net.ns(n)
    const d = await startGuoce(['daemon', '--scheduler', addr, '--cluster-key', key, '--data', join(dir, `daemon-${n}`), '--api', '127.0.0.1:0',
      '--listen', `/ip4/${net.ip(n)}/tcp/0`, '--mirror', '127.0.0.1:0', '--mirror-insecure', reg.host], { netns: ns })
    const mirror = d.ready.mirror as string
    const hosts = join(dir, `certs-${n}`)
    const r = await runGuoce(['mirror', 'hosts', '--registry', reg.host, '--dir', hosts, '--mirror', mirror.replace('http://', ''), '--insecure'])
    expect(r.code, r.stderr).toBe(0)
    nodes.push({ ns, api: d.ready.api as string, mirror, hosts, ctrd: await startPullContainerd(join(dir, `ctrd-${n}`), { netns: ns }) })
  }
}, 180_000)

afterAll(async () => {
  await stopAll()
  await stopRegistries()
  net?.close()
  if (dir != null) await rm(dir, { recursive: true, force: true })
})

describe('registry mirror in network namespaces', () => {
  it('must-hold 1: three namespaced nodes pull one image through their own mirrors; each blob leaves the registry once', async () => {
    const ref = `${reg.host}/demo/app:v1`
    await Promise.all(nodes.map(async n => await n.ctrd.ctr(['images', 'pull', '--hosts-dir', n.hosts, ref])))
    const want = [image.manifestDigest, image.configDigest, ...image.layers.map(l => l.digest)].sort()
    for (const n of nodes) {
      expect((await n.ctrd.ctr(['images', 'ls'])).stdout.split('\n').find(l => l.startsWith(ref))).toContain(image.manifestDigest)
      expect((await n.ctrd.ctr(['content', 'ls', '-q'])).stdout.split('\n').filter(Boolean).sort()).toEqual(want)
      expect(await metric(n.ns, n.api, 'guoce_mirror_upstream_fallbacks_total')).toBe(0)
      expect(await metric(n.ns, n.api, 'guoce_mirror_blob_bytes_total')).toBeGreaterThan(8 * MiB)
    }
    for (const d of [image.configDigest, ...image.layers.map(l => l.digest)]) expect(reg.gets(`/v2/demo/app/blobs/${d}`), d).toBe(1)
    // the hosts.toml containerd read: the mirror on the namespace's loopback, the registry itself over http
    expect(nodes[0]!.mirror).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
  })
})
