/*
 * Reads waiting for pieces of one task. Ownership: the PeerTask owns one PieceWaiters and tells it
 * when the layout becomes known, when a piece is held (verified and written) and when the task ends;
 * each waiter owns its timer and its abort listener and removes itself from the table when it
 * settles, whichever way. `wanted()` is what the task's pump requests first.
 */
import { AbortError, ReadTimeoutError } from '@guoce/interface'

/** Wire priority of a wait: lower is more urgent (transfer's Priority: 0 on-demand, 1 prefetch, 2 background). */
export type WirePriority = number

export interface WaitOptions {
  priority: WirePriority
  timeoutMs: number
  signal?: AbortSignal | undefined
  /** `timeoutMs` counts from the task's last piece (see ReadOptions.whileProgressing) */
  whileProgressing?: boolean | undefined
}

interface Waiter {
  priority: WirePriority
  resolve: () => void
  reject: (err: Error) => void
  /** when the wait began */
  since: number
  /** follows a download (whileProgressing): the task's own parents get time to bring its piece */
  patient: boolean
}

const LAYOUT = -1

export class PieceWaiters {
  private readonly table = new Map<number, Set<Waiter>>()
  private error: Error | undefined
  /** when the last piece arrived (whileProgressing waits count from it) */
  private lastArrival = -Infinity

  /** `onWanted`: a piece became wanted (the task should request it now) */
  constructor (private readonly describe: string, private readonly onWanted: () => void = () => {}) {}

  /** reads waiting, over all pieces and the layout */
  get size (): number {
    let n = 0
    for (const s of this.table.values()) n += s.size
    return n
  }

  /** Resolve once `layout` is called (or reject as any wait does). */
  async layout (o: WaitOptions): Promise<void> { await this.add(LAYOUT, o, 'the task\'s layout') }

  /** Resolve once `arrived(n)` is called. */
  async piece (n: number, o: WaitOptions): Promise<void> { await this.add(n, o, `piece ${n}`) }

  private async add (key: number, o: WaitOptions, what: string): Promise<void> {
    if (this.error != null) throw this.error
    if (o.signal?.aborted === true) throw new AbortError(`the read waiting for ${what} of ${this.describe} was aborted`)
    const { promise, resolve, reject } = Promise.withResolvers<void>()
    let set = this.table.get(key)
    if (set == null) this.table.set(key, set = new Set())
    const start = Date.now()
    const w: Waiter = { priority: o.priority, resolve, reject, since: start, patient: o.whileProgressing === true }
    set.add(w)
    let timer: NodeJS.Timeout | undefined
    const arm = (ms: number): void => {
      timer = setTimeout(() => {
        // while the task receives pieces, a whileProgressing wait goes on: its clock starts at the last one
        const from = o.whileProgressing === true ? Math.max(start, this.lastArrival) : start
        const left = from + o.timeoutMs - Date.now()
        if (left > 0) { arm(left); return }
        reject(new ReadTimeoutError(o.whileProgressing === true
          ? `a read waited for ${what} of ${this.describe} while the task received nothing for ${o.timeoutMs} ms`
          : `a read waited ${o.timeoutMs} ms for ${what} of ${this.describe}; it did not arrive`))
      }, ms)
    }
    arm(o.timeoutMs)
    const onAbort = (): void => { reject(new AbortError(`the read waiting for ${what} of ${this.describe} was aborted`)) }
    o.signal?.addEventListener('abort', onAbort, { once: true })
    if (key !== LAYOUT) this.onWanted()
    try {
      await promise
    } finally {
      clearTimeout(timer)
      o.signal?.removeEventListener('abort', onAbort)
      set.delete(w)
      if (set.size === 0 && this.table.get(key) === set) this.table.delete(key)
    }
  }

  /** The layout is known: wake its waiters. */
  layoutKnown (): void { this.wake(LAYOUT) }

  /** Piece `n` is held: wake its waiters. */
  arrived (n: number): void { this.lastArrival = Date.now(); this.wake(n) }

  private wake (key: number): void {
    const set = this.table.get(key)
    if (set == null) return
    this.table.delete(key)
    for (const w of set) w.resolve()
  }

  /** The task ended without the pieces: every wait, now and later, fails with `err`. */
  failAll (err: Error): void {
    this.error = err
    const all = [...this.table.values()]
    this.table.clear()
    for (const set of all) for (const w of set) w.reject(err)
  }

  /**
   * Of the pieces waited for, those to ask the seed for now: a piece some read waits for impatiently, or
   * that a patient read (one following a download) has waited for `patienceMs` already; `wakeAt`: when the
   * next patient wait comes due. A stream that follows a chained download is usually at its front: asked
   * of the seed at once, every node's next piece came from the seed whenever the seed was ahead of the
   * chain (bench/mirror: the seed uploaded 2.6-4.6 x the image).
   */
  due (now: number, patienceMs: number): { due: Map<number, WirePriority>, wakeAt: number | undefined } {
    const due = new Map<number, WirePriority>()
    let wakeAt: number | undefined
    for (const [n, set] of this.table) {
      if (n === LAYOUT) continue
      let best = Infinity
      let ready = false
      for (const w of set) {
        if (!w.patient || now - w.since >= patienceMs) { ready = true; if (w.priority < best) best = w.priority } else wakeAt = Math.min(wakeAt ?? Infinity, w.since + patienceMs)
      }
      if (ready) due.set(n, best)
    }
    return { due, wakeAt }
  }

  /** Pieces waited for, each with the most urgent priority among its waiters. */
  wanted (): Map<number, WirePriority> {
    const out = new Map<number, WirePriority>()
    for (const [n, set] of this.table) {
      if (n === LAYOUT) continue
      let best = Infinity
      for (const w of set) if (w.priority < best) best = w.priority
      if (set.size > 0) out.set(n, best)
    }
    return out
  }
}
