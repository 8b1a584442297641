/**
 * fuse-native (libfuse 2, CommonJS, no types) as both FUSE servers use it: the operations we implement,
 * typed, and mounting/unmounting as promises. Paths and names cross fuse-native as UTF-8 JS strings.
 */
import { createRequire } from 'node:module'
import { mkdir } from 'node:fs/promises'

const require = createRequire(import.meta.url)

export interface FuseStat { mode: number, size: number, nlink?: number, uid?: number, gid?: number, rdev?: number, ino?: number, mtime: Date, atime: Date, ctime: Date }
export type Cb<T extends unknown[] = []> = (err: number, ...rest: T) => void
export interface FuseOps {
  getattr: (path: string, cb: Cb<[FuseStat?]>) => void
  readdir: (path: string, cb: Cb<[string[]?, FuseStat[]?]>) => void
  open: (path: string, flags: number, cb: Cb<[number?]>) => void
  release: (path: string, fd: number, cb: Cb) => void
  read: (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) => void
  readlink?: (path: string, cb: Cb<[string?]>) => void
  getxattr?: (path: string, name: string, position: number, cb: (err: number, value?: Buffer | null) => void) => void
  listxattr?: (path: string, cb: Cb<[string[]?]>) => void
}
interface FuseInstance { mount: (cb: (err: Error | null) => void) => void, unmount: (cb: (err: Error | null) => void) => void }
type FuseClass = new (mnt: string, ops: FuseOps, opts: Record<string, unknown>) => FuseInstance

/** Linux errnos as FUSE handlers answer them (negative). */
export const Fuse = { EIO: -5, ENOENT: -2, EACCES: -13, ENODATA: -61, EINVAL: -22, ENOTDIR: -20, EISDIR: -21 } as const

export interface FuseMount { unmount: () => Promise<void> }

/** Mounts `ops` read-only-by-design at `mountpoint`; `unmount()` detaches it (fusermount -uz) and ends its thread. */
export async function fuseMount (mountpoint: string, ops: FuseOps, opts: { fsname: string, timeoutMs: number }): Promise<FuseMount> {
  await mkdir(mountpoint, { recursive: true })
  // loaded here, not at import: `guoce image umount` needs no libfuse
  const FuseNative = require('fuse-native') as FuseClass
  const fuse = new FuseNative(mountpoint, ops, {
    // what we serve never changes: let the kernel keep pages, attributes and names
    kernelCache: true,
    attrTimeout: 3600,
    entryTimeout: 3600,
    fsname: opts.fsname,
    // a backstop past our own deadline: fuse-native answers ETIMEDOUT if a handler never calls back
    timeout: opts.timeoutMs
  })
  await new Promise<void>((resolve, reject) => { fuse.mount(err => { if (err != null) reject(err); else resolve() }) })
  let done: Promise<void> | undefined
  return { unmount: async () => { done ??= new Promise<void>((resolve) => { fuse.unmount(() => { resolve() }) }); await done } }
}

export interface ReadCounters { reads: number, bytesRead: number, failedReads: number }

/**
 * Answers a FUSE read once `fill` has put bytes [0, n) in the kernel's buffer: with n, or with EIO when it
 * fails or is not done within `deadlineMs` (the reader is never left waiting on a source).
 */
export function answerRead (cb: (n: number) => void, n: number, fill: () => Promise<void>, o: { deadlineMs: number, counters: ReadCounters, log?: (obj: Record<string, unknown>) => void, what: Record<string, unknown> }): void {
  let answered = false
  const answer = (r: number): void => { if (!answered) { answered = true; clearTimeout(timer); cb(r) } }
  const timer = setTimeout(() => { o.counters.failedReads++; o.log?.({ msg: 'read past its deadline', ...o.what }); answer(Fuse.EIO) }, o.deadlineMs)
  fill().then(() => {
    if (answered) return
    o.counters.bytesRead += n
    answer(n)
  }, (err: Error) => {
    if (answered) return
    o.counters.failedReads++
    o.log?.({ msg: 'read failed', ...o.what, err: err.message })
    answer(Fuse.EIO)
  })
}
