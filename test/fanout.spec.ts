/**
 * Fan-out correctness under the fast paths (issue 14): 16 real daemons on 127.0.0.1 get one file at once
 * from a swarm the scheduler lays out as striped trees, while a busy loop holds one of the machine's CPUs.
 * Every copy is byte-identical to the origin's file and the origin sends it about once: slow peers are
 * waited for, not replaced by the origin (origin bytes must not depend on the host's load).
 */
import { describe, it, expect, afterEach } from 'vitest'
import { randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { sha, startOrigin, startCluster, startGuoce, runGuoce, stopAll, NODE, type Proc } from '@guoce/testkit'

const MiB = 1024 * 1024
const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {})
  await stopAll()
})

async function metric (api: string, name: string): Promise<number> {
  const text = await (await fetch(`${api}/metrics`)).text()
  const line = text.split('\n').find(l => l.startsWith(name + ' ') || (!name.includes('{') && l.startsWith(name + '{')))
  return line == null ? NaN : Number(line.split(' ').pop())
}

describe('fan-out to 16 daemons', () => {
  it('striped trees under a CPU hog: 16 byte-identical copies, origin bytes <= 1.05 F, no peer fetches from the origin', async () => {
    const file = randomBytes(12 * MiB)
    const origin = await startOrigin({ files: { 'f.bin': file }, rate: 0 })
    cleanups.push(async () => { await origin.close() })
    // beyond 4 peers the task switches to striped trees (scheduler/src/scheduling/forest.ts)
    const cluster = await startCluster({ daemons: 0, schedulerArgs: ['--chain-max-peers', '4'] })
    cleanups.push(async () => { await cluster.close() })
    // four at a time, each with time to start on a busy machine (16 Node start-ups share two vCPUs)
    const daemons: Array<Proc & { api: string }> = []
    for (let i = 0; i < 16; i += 4) {
      daemons.push(...await Promise.all([i, i + 1, i + 2, i + 3].map(async (j) => {
        const p = await startGuoce(['daemon', '--scheduler', cluster.schedulerAddr, '--cluster-key', cluster.clusterKey, '--data', join(cluster.dir, `daemon-${j}`), '--api', '127.0.0.1:0', '--listen', '/ip4/127.0.0.1/tcp/0'], { timeoutMs: 120_000 })
        cleanups.push(async () => { await p.kill('SIGKILL') })
        return Object.assign(p, { api: p.ready.api as string })
      })))
    }
    const out = await mkdtemp(join(tmpdir(), 'guoce-fanout-'))
    cleanups.push(async () => { await rm(out, { recursive: true, force: true }) })
    // a busy loop on cpu 0 beside the swarm: everyone is slower, nobody is gone
    const hog = spawn('taskset', ['-c', '0', NODE, '-e', 'for (;;) {}'], { stdio: 'ignore' })
    const hogExit = new Promise(resolve => hog.once('exit', resolve))
    cleanups.push(async () => { hog.kill('SIGKILL'); await hogExit })

    const results = await Promise.all(daemons.map(async (d, i) =>
      await runGuoce(['get', `${origin.url}/f.bin`, '-O', join(out, `copy-${i}`), '--daemon', d.api, '--json'])))
    for (const r of results) expect(r.code, r.stderr).toBe(0)
    const want = sha(file)
    for (let i = 0; i < results.length; i++) expect(sha(await readFile(join(out, `copy-${i}`))), `copy ${i}`).toBe(want)
    const sent = origin.sent['f.bin']! / file.length
    expect(sent).toBeGreaterThanOrEqual(1)
    expect(sent).toBeLessThanOrEqual(1.05)
    for (const r of results) expect(JSON.parse(r.stdout.trim().split('\n').pop()!).piecesFromSource).toBe(0)
    // the layout really was striped, and the peers fed each other
    let striped = 0
    let fromPeers = 0
    for (const d of daemons) {
      if (await metric(d.api, 'guoce_peer_parent_lists_total{mode="striped"}') > 0) striped++
      fromPeers += await metric(d.api, 'guoce_peer_upload_bytes_total')
    }
    expect(striped).toBe(16)
    expect(fromPeers).toBeGreaterThanOrEqual(8 * file.length)
  }, 300_000)
})
