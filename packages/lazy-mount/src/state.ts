/**
 * Mount state on disk: one `<stateDir>/<id>.json` per lazy mount, written before the first mount(2) and
 * removed after the last umount, naming the serving process (pid + its start time, so a reused pid is not
 * taken for it) and every mount point it may have made. A mount whose serving process is gone cannot be
 * re-attached (its FUSE connection died with it); `cleanupStale` undoes it: aborts the FUSE connection
 * (fusectl), detaches every mount (umount2 MNT_DETACH), removes the work directory and the state file.
 * So a restart never leaves a hung mount: readers of a dead mount get EIO, then the mount is gone.
 */
import { readdir, readFile, rename, rm, writeFile, mkdir, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { randomBytes } from 'node:crypto'
import * as native from '@guoce/native-mount'
import { LazyMountError } from './errors.js'

export interface MountState {
  id: string
  pid: number
  /** Field 22 of /proc/PID/stat: tells this process from a later one with the same pid. */
  pidStart: string
  ref: string
  target: string
  work: string
  /** The FUSE blob mount. */
  fuse: string
  /** Per-layer EROFS mount points, bottom first. */
  layers: string[]
  created: string
}

export async function processStart (pid: number): Promise<string | undefined> {
  const s = await readFile(`/proc/${pid}/stat`, 'latin1').catch(() => undefined)
  if (s === undefined) return undefined
  // the command name (field 2) may hold spaces and parentheses: fields after the last ')'
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
  // a zombie (killed, not yet reaped by a parent that may never reap it) serves nothing
  if (f[0] === 'Z' || f[0] === 'X') return undefined
  return f[19]
}

export async function isAlive (st: MountState): Promise<boolean> {
  return (await processStart(st.pid)) === st.pidStart
}

export async function writeState (stateDir: string, st: MountState): Promise<void> {
  await mkdir(stateDir, { recursive: true })
  const p = join(stateDir, `${st.id}.json`)
  const tmp = `${p}.tmp`
  await writeFile(tmp, JSON.stringify(st, null, 2))
  await rename(tmp, p)
}

export async function removeState (stateDir: string, id: string): Promise<void> {
  await rm(join(stateDir, `${id}.json`), { force: true })
}

export async function listStates (stateDir: string): Promise<MountState[]> {
  const names = await readdir(stateDir).catch(() => [] as string[])
  const out: MountState[] = []
  for (const n of names) {
    if (!/^[0-9a-f]{16}\.json$/.test(n)) continue
    const st = await readFile(join(stateDir, n), 'utf8').then(s => JSON.parse(s) as MountState, () => undefined)
    if (st !== undefined && typeof st.target === 'string' && typeof st.pid === 'number') out.push(st)
  }
  return out
}

export async function findState (stateDir: string, target: string): Promise<MountState | undefined> {
  const t = resolve(target)
  return (await listStates(stateDir)).find(s => s.target === t)
}

interface MountInfo { point: string, dev: string, fstype: string }

function unescape (s: string): string { return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))) }

/** The mounts of this mount namespace (without stat-ing any: a hung FUSE mount would block a stat). */
export async function mountTable (): Promise<MountInfo[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8')
  return text.split('\n').filter(l => l !== '').map(l => {
    const f = l.split(' ')
    const sep = f.indexOf('-')
    return { point: unescape(f[4] ?? ''), dev: f[2] ?? '', fstype: f[sep + 1] ?? '' }
  })
}

/** Aborts the FUSE connection mounted at `point` (its requests and every later one fail with ENOTCONN/EIO). */
export async function abortFuse (point: string): Promise<void> {
  const m = (await mountTable()).filter(x => x.point === point && x.fstype.startsWith('fuse')).pop()
  if (m === undefined) return
  const minor = m.dev.split(':')[1]
  const dir = '/sys/fs/fuse/connections'
  if (await stat(join(dir, minor ?? '', 'abort')).then(() => false, () => true)) {
    await native.mount('fusectl', dir, 'fusectl', 0, null).catch(() => {})
  }
  await writeFile(join(dir, minor ?? '', 'abort'), '1').catch(() => {})
}

/** Detaches every mount a state names that is still mounted, top first, and removes its files. */
export async function undoMounts (stateDir: string, st: MountState): Promise<void> {
  // EROFS mode has one FUSE mount (the blobs), FUSE mode one per layer
  for (const p of [st.fuse, ...st.layers]) await abortFuse(p)
  for (const p of [st.target, ...[...st.layers].reverse(), st.fuse]) {
    // a point may carry several mounts (a mount made twice): detach until none is left
    for (let i = 0; i < 8; i++) {
      if (!(await mountTable()).some(m => m.point === p)) break
      await native.umount2(p, native.constants.MNT_DETACH).catch(() => {})
    }
  }
  await rm(st.work, { recursive: true, force: true })
  await removeState(stateDir, st.id)
}

/** Undoes the mounts of every state whose serving process is gone; returns what it cleaned. */
export async function cleanupStale (stateDir: string): Promise<MountState[]> {
  const gone: MountState[] = []
  for (const st of await listStates(stateDir)) {
    if (await isAlive(st)) continue
    await undoMounts(stateDir, st)
    gone.push(st)
  }
  return gone
}

/**
 * Claim `targetDir` for a new mount of `ref` by this process: stale mounts cleaned up, a live mount there
 * refused, a work dir made and the state written (its FUSE mount point `<work>/<fuseName>`).
 */
export async function claimMount (stateDir: string, targetDir: string, ref: string, fuseName: string): Promise<MountState> {
  const target = resolve(targetDir)
  await cleanupStale(stateDir)
  const other = await findState(stateDir, target)
  if (other !== undefined && await isAlive(other)) throw new LazyMountError(`${target}: already a lazy mount of ${other.ref} (pid ${other.pid})`)
  const id = randomBytes(8).toString('hex')
  const work = join(stateDir, id)
  const state: MountState = { id, pid: process.pid, pidStart: (await processStart(process.pid)) ?? '', ref, target, work, fuse: join(work, fuseName), layers: [], created: new Date().toISOString() }
  await mkdir(work, { recursive: true })
  await writeState(stateDir, state)
  return state
}

/**
 * `guoce image umount DIR`: asks the serving process to undo its mounts (SIGTERM), and if it is gone or does
 * not within `graceMs`, kills it and undoes them here. Throws LazyMountError when DIR is no lazy mount.
 */
export async function lazyUmount (targetDir: string, stateDir: string, graceMs: number): Promise<MountState> {
  const st = await findState(stateDir, targetDir)
  if (st === undefined) {
    await cleanupStale(stateDir)
    throw new LazyMountError(`${resolve(targetDir)}: not a lazy mount (no state in ${stateDir})`)
  }
  const stateFile = join(stateDir, `${st.id}.json`)
  const gone = async (): Promise<boolean> => !(await isAlive(st)) || await stat(stateFile).then(() => false, () => true)
  if (await isAlive(st)) {
    try { process.kill(st.pid, 'SIGTERM') } catch {}
    const until = Date.now() + graceMs
    while (Date.now() < until && !await gone()) await new Promise(resolve => setTimeout(resolve, 50))
    if (await isAlive(st) && await stat(stateFile).then(() => true, () => false)) {
      try { process.kill(st.pid, 'SIGKILL') } catch {}
      const killUntil = Date.now() + 5_000
      while (Date.now() < killUntil && await isAlive(st)) await new Promise(resolve => setTimeout(resolve, 50))
    }
  }
  if (await stat(stateFile).then(() => true, () => false)) await undoMounts(stateDir, st)
  return st
}
