/** Small helpers every cross-process test uses. */
import { createHash } from 'node:crypto'

/** sha256 hex of some bytes (compare a copy with its origin) */
export function sha (b: Uint8Array): string { return createHash('sha256').update(b).digest('hex') }

/** Poll `cond` every `stepMs` until it holds; throws `timed out waiting for <what>` after `timeoutMs`. */
export async function until (cond: () => Promise<boolean> | boolean, what: string, timeoutMs = 60_000, stepMs = 50): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, stepMs))
  }
}
