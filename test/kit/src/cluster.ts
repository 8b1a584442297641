/** A loopback cluster of real processes: scheduler, seed peers, daemons. */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer } from 'node:net'
import { startGuoce, type Proc } from './procs.js'

export async function freePort (): Promise<number> {
  const s = createServer()
  await new Promise<void>(resolve => s.listen(0, '127.0.0.1', resolve))
  const port = (s.address() as { port: number }).port
  await new Promise(resolve => s.close(resolve))
  return port
}

export interface Cluster {
  dir: string
  schedulerPort: number
  scheduler: Proc
  schedulerAddr: string
  /** the scheduler's cluster key file (seeds and daemons get --cluster-key with it) */
  clusterKey: string
  /** the scheduler's seed key file (seeds get --seed-key with it) */
  seedKey: string
  seeds: Proc[]
  daemons: Array<Proc & { api: string, data: string }>
  startScheduler(): Promise<Proc>
  addSeed(extra?: string[]): Promise<Proc>
  addDaemon(extra?: string[], data?: string): Promise<Proc & { api: string, data: string }>
  close(): Promise<void>
}

export async function startCluster (o: { daemons: number, seeds?: number, schedulerArgs?: string[], seedArgs?: string[], daemonArgs?: string[] }): Promise<Cluster> {
  const dir = await mkdtemp(join(tmpdir(), 'guoce-cluster-'))
  const schedulerPort = await freePort()
  const c: Cluster = {
    dir, schedulerPort, seeds: [], daemons: [],
    scheduler: undefined as unknown as Proc,
    schedulerAddr: '',
    clusterKey: '',
    seedKey: '',
    startScheduler: async () => {
      c.scheduler = await startGuoce(['scheduler', '--listen', `/ip4/127.0.0.1/tcp/${schedulerPort}`, '--data', join(dir, 'scheduler'), ...(o.schedulerArgs ?? [])])
      c.schedulerAddr = c.scheduler.ready.addr as string
      c.clusterKey = (c.scheduler.ready.clusterKey as string | null) ?? ''
      c.seedKey = c.scheduler.ready.seedKey as string
      return c.scheduler
    },
    addSeed: async (extra = []) => {
      const i = c.seeds.length
      const p = await startGuoce(['seed', '--scheduler', c.schedulerAddr, ...membership(), '--seed-key', c.seedKey, '--data', join(dir, `seed-${i}`), '--listen', '/ip4/127.0.0.1/tcp/0', ...(o.seedArgs ?? []), ...extra])
      c.seeds.push(p)
      return p
    },
    addDaemon: async (extra = [], data) => {
      const i = c.daemons.length
      const d = data ?? join(dir, `daemon-${i}`)
      const p = await startGuoce(['daemon', '--scheduler', c.schedulerAddr, ...membership(), '--data', d, '--api', '127.0.0.1:0', '--listen', '/ip4/127.0.0.1/tcp/0', ...(o.daemonArgs ?? []), ...extra])
      const entry = Object.assign(p, { api: p.ready.api as string, data: d })
      c.daemons.push(entry)
      return entry
    },
    close: async () => {
      await Promise.all([c.scheduler, ...c.seeds, ...c.daemons].filter(p => p != null).map(async p => { await p.kill('SIGKILL') }))
      await rm(dir, { recursive: true, force: true })
    }
  }
  /** a scheduler started with --open has no cluster key: its nodes join with --open too */
  const membership = (): string[] => c.clusterKey !== '' ? ['--cluster-key', c.clusterKey] : ['--open']
  await c.startScheduler()
  for (let i = 0; i < (o.seeds ?? 1); i++) await c.addSeed()
  for (let i = 0; i < o.daemons; i++) await c.addDaemon()
  return c
}
