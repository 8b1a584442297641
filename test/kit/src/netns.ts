/**
 * A private network of namespaces for cross-process tests: one bridge namespace, one namespace per host with a
 * veth to the bridge and an address in 10.<n>.0.0/24; loopback up everywhere. `close()` deletes every namespace
 * it made (the veths go with them), also after a failed test. Names carry the test process's pid.
 */
import { execFileSync } from 'node:child_process'

export interface Network {
  /** the namespace of a host */
  ns(host: string): string
  /** the address of a host */
  ip(host: string): string
  /** bytes a host's link (its eth0) received and sent so far (the kernel's counters) */
  linkBytes(host: string): { rx: number, tx: number }
  close(): void
}

let made = 0

/** `mbit`: every host's link shaped to that rate both ways (tbf, 64 KB burst: ENVIRONMENT.md), else unshaped. */
export function createNetwork (hosts: string[], o: { mbit?: number } = {}): Network {
  const id = `gt${process.pid % 100000}n${made++}`
  const net = 10 + ((process.pid + made * 37) % 200)
  const sh = (...args: string[]): void => { execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] }) }
  const created: string[] = []
  const addNs = (name: string): void => { sh('netns', 'add', name); created.push(name); sh('-n', name, 'link', 'set', 'lo', 'up') }
  const close = (): void => { for (const n of created.splice(0).reverse()) { try { sh('netns', 'del', n) } catch {} } }
  const addrs = new Map<string, { ns: string, ip: string }>()
  try {
    const br = `${id}-br`
    addNs(br)
    sh('-n', br, 'link', 'add', 'br0', 'type', 'bridge')
    sh('-n', br, 'link', 'set', 'br0', 'up')
    for (const [i, h] of hosts.entries()) {
      const ns = `${id}-${h}`
      addNs(ns)
      const end = `v${i}`
      sh('link', 'add', 'eth0', 'netns', ns, 'type', 'veth', 'peer', 'name', end, 'netns', br)
      sh('-n', br, 'link', 'set', end, 'master', 'br0')
      sh('-n', br, 'link', 'set', end, 'up')
      const ip = `10.${net}.0.${10 + i}`
      sh('-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0')
      sh('-n', ns, 'link', 'set', 'eth0', 'up')
      if (o.mbit != null) {
        for (const [where, dev] of [[ns, 'eth0'], [br, end]] as const) {
          sh('-n', where, 'link', 'set', dev, 'txqueuelen', '1000')
          sh('netns', 'exec', where, 'tc', 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', `${o.mbit}mbit`, 'burst', '64kb', 'latency', '50ms')
        }
      }
      addrs.set(h, { ns, ip })
    }
  } catch (err) {
    close()
    throw err
  }
  const get = (h: string): { ns: string, ip: string } => { const a = addrs.get(h); if (a == null) throw new Error(`no host ${h} in the network`); return a }
  const linkBytes = (h: string): { rx: number, tx: number } => {
    const out = execFileSync('ip', ['-n', get(h).ns, '-j', '-s', 'link', 'show', 'dev', 'eth0'], { encoding: 'utf8' })
    const s = (JSON.parse(out) as Array<{ stats64: { rx: { bytes: number }, tx: { bytes: number } } }>)[0]!.stats64
    return { rx: s.rx.bytes, tx: s.tx.bytes }
  }
  return { ns: h => get(h).ns, ip: h => get(h).ip, linkBytes, close }
}
