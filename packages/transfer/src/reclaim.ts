/*
 * Giving memory back after an attack. What a hostile host makes a process allocate (decrypted frames,
 * half-read messages, records) is garbage once it is dropped, but V8 collects it only when the process
 * allocates again: a service that goes quiet after the attacker leaves would keep it resident. After a
 * bound is broken the owner calls `reclaimSoon()`: one full collection RECLAIM_DELAY_MS later, at most one
 * every RECLAIM_INTERVAL_MS, so an ongoing attack cannot make it collect in a loop.
 */
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

/**
 * Delay from the last broken bound to the collection (the attacker's connections close meanwhile).
 * @default 1 s
 */
export const RECLAIM_DELAY_MS = 1_000
/**
 * Least time between two collections.
 * @default 3 s
 */
export const RECLAIM_INTERVAL_MS = 3_000

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

let timer: NodeJS.Timeout | undefined
let last = 0
let pending = false

/** Schedule a full collection after the attack that broke a bound (debounced, rate limited). */
export function reclaimSoon (): void {
  pending = true
  if (timer != null) return
  const run = (): void => {
    timer = undefined
    if (!pending) return
    pending = false
    last = Date.now()
    fullCollection()
    // a bound broken while collecting: once more, after the interval
    if (pending) schedule()
  }
  const schedule = (): void => {
    timer = setTimeout(run, Math.max(RECLAIM_DELAY_MS, last + RECLAIM_INTERVAL_MS - Date.now()))
    timer.unref()
  }
  schedule()
}
