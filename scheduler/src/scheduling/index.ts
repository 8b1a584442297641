/**
 * Parent selection: filters (each refusal is logged with its reason), a cycle check over the
 * parent/child DAG, then a ranking that builds a pipeline (measured in bench/fanout):
 *
 * - A running child takes running peers as parents only if they joined the task before it (join order
 *   = the task's peer map order). Edges then always go from earlier to later peers, so the DAG can never
 *   need the cycle check to refuse anything, and every peer has its place in one pipeline.
 * - Ranked first: peers that hold the whole task; then earlier peers with the fewest children of this
 *   task, nearest first. With equal links the bound T_min is reached only when every byte crosses each
 *   link once, so each peer feeds one successor at full rate and the seed feeds one head (a chain, with
 *   the next-nearest peers as backups); the evaluator's score breaks the remaining ties.
 * - The seed feeds SEED_CHILD_LIMIT children; others get it only when nothing else is left, or once they
 *   asked MAX_SCHEDULE_RETRIES times in vain (then over its upload slots too: the seed, busy or not, is
 *   where a child waits rather than go back to the origin).
 *
 * A decision looks at a bounded window of candidates read from the task's join-ordered PeerMap
 * (`candidates`): O(window) whatever the size of the task. Large swarms do not use the chain for their
 * primaries (a chain of N peers delays the last one by N piece times): see ./forest.ts.
 */
import type { Logger } from '@guoce/interface'
import { evaluate } from '../evaluator/index.js'
import { CANDIDATE_AFTER_SCAN, CANDIDATE_BEFORE_SCAN, CANDIDATE_FIRST_SCAN, CANDIDATE_PARENT_LIMIT, MAX_CYCLE_WALK, MAX_SCHEDULE_RETRIES, SEED_CHILD_LIMIT, STALLED_PARENT_MS } from '../constants.js'
import type { Peer } from '../resource/index.js'

/** Is `target` reachable from `from` following child edges? (then target -> from would close a cycle) */
export function reaches (from: Peer, target: Peer): boolean {
  const seen = new Set<Peer>()
  const stack = [from]
  while (stack.length > 0) {
    const p = stack.pop()!
    if (p === target) return true
    if (seen.has(p)) continue
    seen.add(p)
    for (const c of p.children) stack.push(c)
  }
  return false
}

/**
 * Could `target` be a descendant of `from`? Levels are a topological order (resource/), so the walk
 * only enters peers below the target's level; it answers true (refuse) once it has seen `maxWalk` peers.
 */
export function mayReach (from: Peer, target: Peer, maxWalk = MAX_CYCLE_WALK): boolean {
  if (from.children.size === 0) return false
  const seen = new Set<Peer>()
  const stack = [...from.children]
  while (stack.length > 0) {
    const p = stack.pop()!
    if (p === target) return true
    if (p.level >= target.level || seen.has(p)) continue
    if (seen.size >= maxWalk) return true
    seen.add(p)
    for (const c of p.children) stack.push(c)
  }
  return false
}

export function refuseReason (child: Peer, cand: Peer): string | null {
  if (cand === child) return 'self'
  if (cand.state === 'failed' || cand.state === 'left') return `state ${cand.state}`
  if (child.blamed.has(cand.id)) return 'blamed by child'
  if (cand.bad) return 'blamed by several children'
  if (cand.host.isSeed && !cand.isSource && (cand.bitmap?.count ?? 0) === 0) return 'seed host without pieces'
  // a starving child's parent that has made no progress for STALLED_PARENT_MS and holds nothing the
  // child lacks is no parent at all (it may be stopped: the child has nothing in flight to blame it for)
  // (only while a source holds a piece the candidate lacks: when the source itself is what everyone
  // waits for, a slow origin, the candidate is as current as any peer can be; and only while its host
  // sends nothing at all, on any task: a host that is alive but slow, its links shared by several
  // tasks, keeps its children, who would otherwise all go to the seed and make it upload each piece
  // many times over: bench/mirror, seed uploads 4.6 x the image)
  const now = Date.now()
  if (child.starving && !cand.host.isSeed && !cand.isSource && now - cand.progressAt >= STALLED_PARENT_MS && now - cand.host.heardAt >= STALLED_PARENT_MS && !holdsMissing(cand, child) && sourceAhead(cand)) return 'stalled with nothing the child lacks'
  const slots = cand.host.uploadSlots
  // a child that asked MAX_SCHEDULE_RETRIES times in vain gets the task's seed over the seed's slots: the
  // seed serves it when it can (busy frames meanwhile), where the origin would serve it once more
  const starved = child.scheduleRetries >= MAX_SCHEDULE_RETRIES && cand.host.isSeed && cand.isSource
  if (!child.parents.has(cand) && cand.host.childCount >= slots && !starved) return `no free upload slot (${slots})`
  // levels are a topological order (resource/): a candidate not above the child cannot be its descendant
  if (cand.level > child.level && mayReach(child, cand)) return 'would close a cycle'
  return null
}

/** Whether a source of the task (among its first joiners, where sources are) holds a piece `p` lacks. */
function sourceAhead (p: Peer): boolean {
  for (const q of p.task.peers.first(CANDIDATE_FIRST_SCAN)) {
    if (q !== p && q.isSource && q.state !== 'failed' && q.state !== 'left' && (q.state === 'succeeded' || holdsMissing(q, p))) return true
  }
  return false
}

/** Whether `cand` holds a piece that `child` does not. */
function holdsMissing (cand: Peer, child: Peer): boolean {
  const a = cand.bitmap?.bytes
  if (a == null) return false
  const b = child.bitmap?.bytes
  for (let i = 0; i < a.length; i++) if ((a[i]! & ~(b?.[i] ?? 0)) !== 0) return true
  return false
}

/** The peers one decision looks at (may repeat a peer): current parents, first joiners, nearest joiners. */
export function * candidates (child: Peer): Generator<Peer> {
  const peers = child.task.peers
  yield * child.parents
  yield * peers.first(CANDIDATE_FIRST_SCAN)
  yield * peers.before(child, CANDIDATE_BEFORE_SCAN)
  yield * peers.after(child, CANDIDATE_AFTER_SCAN)
}

interface Ranked { p: Peer, tier: number, children: number, distance: number, score: number }

const byRank = (a: Ranked, b: Ranked): number => a.tier - b.tier || a.children - b.children || a.distance - b.distance || b.score - a.score

/** Holds the whole task (a complete peer may be a parent whatever its place in join order). */
function complete (p: Peer): boolean { return p.state === 'succeeded' || (p.bitmap?.full ?? false) }

/**
 * Up to `limit` parents for `child`, best first (the first is its primary). `exclude` is left out
 * (the stripe parents of a forest child, which ./forest.ts chose).
 */
export function selectParents (child: Peer, log: Logger, limit = CANDIDATE_PARENT_LIMIT, exclude?: ReadonlySet<Peer>): Peer[] {
  if (limit <= 0) return []
  const task = child.task
  const pieceCount = task.info?.pieceCount ?? 0
  const scored: Ranked[] = []
  const seeds: Ranked[] = []
  const childPos = task.peers.order(child)
  const seen = new Set<Peer>()
  for (const cand of candidates(child)) {
    if (cand === child || seen.has(cand) || exclude?.has(cand) === true) continue
    seen.add(cand)
    const position = task.peers.order(cand)
    if (position < 0) continue // gone
    const joinedAfter = position > childPos
    const reason = refuseReason(child, cand) ?? orderReason(cand, joinedAfter)
    if (reason != null) {
      log.debug('parent refused', { task: task.id.slice(0, 12), child: child.id, parent: cand.id, reason })
      continue
    }
    const slots = cand.host.uploadSlots
    const entry: Ranked = {
      p: cand,
      tier: cand.host.isSeed ? 2 : complete(cand) ? 0 : 1,
      // a parent's current children, not counting this child
      children: cand.children.size - (child.parents.has(cand) ? 1 : 0),
      // peers that joined after the child (complete ones only) rank after every earlier peer
      distance: joinedAfter ? Number.MAX_SAFE_INTEGER - position : childPos - position,
      score: evaluate({
        parentPieces: cand.bitmap?.count ?? 0,
        pieceCount,
        parentFreeSlots: slots - cand.host.childCount,
        parentSlots: slots,
        parentLoad: cand.host.info.load,
        parentIdc: cand.host.info.idc,
        childIdc: child.host.info.idc,
        parentLocation: cand.host.location,
        childLocation: child.host.location
      })
    }
    if (cand.host.isSeed) seeds.push(entry)
    else scored.push(entry)
  }
  scored.sort(byRank)
  const chosen = scored.slice(0, limit)
  // the seed: for its first SEED_CHILD_LIMIT children, and for any child with no other parent
  seeds.sort((a, b) => a.children - b.children || b.score - a.score)
  for (const s of seeds) {
    // a ranged reader (lazy) wants pieces anywhere in the task: only the seed is sure to get them; so
    // does a child that asked MAX_SCHEDULE_RETRIES times in vain (its parents had nothing for it)
    if (chosen.length === 0 || s.children < SEED_CHILD_LIMIT || child.lazy || child.scheduleRetries >= MAX_SCHEDULE_RETRIES) {
      if (chosen.length >= limit) chosen.pop()
      chosen.unshift(s)
    }
  }
  return chosen.map(s => s.p)
}

/** A running peer that joined after the child would put the child upstream of it: refused. */
function orderReason (cand: Peer, joinedAfterChild: boolean): string | null {
  if (!joinedAfterChild || cand.host.isSeed || cand.isSource) return null
  if (complete(cand)) return null
  return 'joined after the child'
}
