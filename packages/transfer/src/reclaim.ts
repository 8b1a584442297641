/*
 * Giving memory back after an attack. What a hostile host makes a process allocate (decrypted frames,
 * half-read messages, records) is garbage once it is dropped, but V8 collects it only when the process
 * allocates again: a service that goes quiet after the attacker leaves would keep it resident. After a
 * bound is broken the owner calls `reclaimSoon()`: a full collection RECLAIM_DELAY_MS later and a short tail
 * after it (RECLAIM_TAIL), at most one every RECLAIM_INTERVAL_MS, so an ongoing attack cannot make it collect
 * in a loop; after each, glibc's free heap pages go back to the OS (malloc_trim, native/crypto).
 */
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { trimHeap } from '@guoce/native-crypto'

/**
 * Delay from the last broken bound to the collection (the attacker's connections close meanwhile).
 * @default 1 s
 */
export const RECLAIM_DELAY_MS = 1_000
/**
 * Least time between two collections, and the spacing of the tail.
 * @default 2 s
 */
export const RECLAIM_INTERVAL_MS = 2_000

/**
 * Time from a collection to the heap trim: array buffers are freed by V8's sweeper after the collection.
 * @default 250 ms
 */
export const RECLAIM_TRIM_DELAY_MS = 250

let collect: (() => void) | null | undefined

/** A full garbage collection, where the runtime allows one (V8's gc, made available to this module only). */
export function fullCollection (): boolean {
  if (collect === undefined) {
    try {
      setFlagsFromString('--expose-gc')
      const gc = runInNewContext('gc') as (() => void) | undefined
      collect = typeof gc === 'function' ? gc : null
    } catch {
      collect = null
    }
  }
  if (collect == null) return false
  collect()
  return true
}

/**
 * Collections after the last broken bound: the attacker's connections may close (and their buffers become
 * garbage) seconds after the bound broke, so a tail follows, RECLAIM_INTERVAL_MS apart (the last about
 * 11 s after the last broken bound).
 * @default 5
 */
export const RECLAIM_TAIL = 5

let timer: NodeJS.Timeout | undefined
let last = 0
/** collections still due after the last trigger */
let due = 0

function run (): void {
  timer = undefined
  last = Date.now()
  fullCollection()
  // the collection frees the attacker's buffers into the C heap (V8 sweeps array buffers on a background
  // thread, so a moment later); then hand the heap's free pages back
  setTimeout(trimHeap, RECLAIM_TRIM_DELAY_MS).unref()
  if (--due > 0) schedule(RECLAIM_INTERVAL_MS)
}

function schedule (delay: number): void {
  timer = setTimeout(run, Math.max(delay, last + RECLAIM_INTERVAL_MS - Date.now()))
  timer.unref()
}

/** Schedule a full collection (and its tail) after the attack that broke a bound (debounced, rate limited). */
export function reclaimSoon (): void {
  due = 1 + RECLAIM_TAIL
  if (timer == null) schedule(RECLAIM_DELAY_MS)
}
