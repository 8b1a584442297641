/**
 * Start `guoce` processes (built CLI on the pinned Node) and stop every one of them, also when
 * a test fails: register `stopAll` in afterEach/afterAll.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'

const here = dirname(fileURLToPath(import.meta.url))
export const ROOT = join(here, '..', '..', '..', '..')
export const CLI = join(ROOT, 'packages', 'cli', 'dist', 'src', 'bin.js')
export const NODE = process.execPath

export interface Proc {
  child: ChildProcess
  ready: Record<string, unknown>
  stderr: string[]
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  kill(signal?: NodeJS.Signals): Promise<void>
}

const live = new Set<Proc>()

/**
 * `argv` run inside network namespace `netns` (none: as is): `ip netns exec` (a mount namespace of its own, /sys
 * of the netns), or with `hostMounts` `nsenter --net` (the host's mount namespace). Both exec the command.
 */
export function inNetns (netns: string | undefined, argv: string[], hostMounts = false): string[] {
  if (netns == null) return argv
  return hostMounts ? ['nsenter', `--net=/run/netns/${netns}`, ...argv] : ['ip', 'netns', 'exec', netns, ...argv]
}

/**
 * Spawn `guoce ARGS --json` (inside network namespace `netns` when given) and wait for its `ready` line.
 * `hostMounts`: enter only the network namespace (nsenter), so that mounts the process makes are in the host's
 * mount namespace (a snapshotter whose mounts containerd must see); `ip netns exec` gives it a mount namespace
 * of its own.
 */
export async function startGuoce (args: string[], opts: { env?: Record<string, string>, timeoutMs?: number, netns?: string, hostMounts?: boolean } = {}): Promise<Proc> {
  // `ip netns exec` and `nsenter` exec the command: the child is the guoce process itself
  const argv = [CLI, ...args, '--json']
  const [cmd, ...cmdArgs] = inNetns(opts.netns, [NODE, ...argv], opts.hostMounts)
  const child = spawn(cmd!, cmdArgs, { env: { ...process.env, GUOCE_LOG: process.env.GUOCE_TEST_LOG ?? 'warn', ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] })
  const stderr: string[] = []
  createInterface({ input: child.stderr! }).on('line', l => { stderr.push(l); if (process.env.GUOCE_TEST_ECHO != null) process.stderr.write(`[${args[0]}] ${l}\n`) })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>(resolve => child.once('exit', (code, signal) => { resolve({ code, signal }) }))
  const proc: Proc = {
    child, stderr, exited, ready: {},
    kill: async (signal = 'SIGTERM') => {
      if (child.exitCode == null && child.signalCode == null) {
        child.kill(signal)
        const t = setTimeout(() => child.kill('SIGKILL'), 5_000)
        await exited
        clearTimeout(t)
      }
      live.delete(proc)
    }
  }
  live.add(proc)
  const lines = createInterface({ input: child.stdout! })
  proc.ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`guoce ${args[0]} not ready in time; stderr:\n${stderr.join('\n')}`)) }, opts.timeoutMs ?? 20_000)
    lines.once('line', l => { clearTimeout(timer); try { resolve(JSON.parse(l)) } catch (err) { reject(err) } })
    void exited.then(({ code }) => { clearTimeout(timer); reject(new Error(`guoce ${args[0]} exited (${code}) before ready:\n${stderr.join('\n')}`)) })
  })
  return proc
}

export interface RunResult { code: number | null, stdout: string, stderr: string }

/** Run `guoce ARGS` to completion. */
export async function runGuoce (args: string[], opts: { env?: Record<string, string>, timeoutMs?: number } = {}): Promise<RunResult> {
  const child = spawn(NODE, [CLI, ...args], { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''; let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000)
  const code = await new Promise<number | null>(resolve => child.once('exit', (c) => { resolve(c) }))
  clearTimeout(timer)
  return { code, stdout, stderr }
}

export async function stopAll (): Promise<void> {
  await Promise.all([...live].map(async p => { await p.kill(process.env.GUOCE_STOP_SIGNAL as NodeJS.Signals ?? 'SIGKILL') }))
}
