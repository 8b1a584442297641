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
 * - The seed feeds SEED_CHILD_LIMIT children; others get it only when nothing else is left.
 */
import type { Logger } from '@guoce/interface'
import { evaluate } from '../evaluator/index.js'
import { CANDIDATE_PARENT_LIMIT, SEED_CHILD_LIMIT } from '../constants.js'
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

export function refuseReason (child: Peer, cand: Peer): string | null {
  if (cand === child) return 'self'
  if (cand.state === 'failed' || cand.state === 'left') return `state ${cand.state}`
  if (child.blamed.has(cand.id)) return 'blamed by child'
  if (cand.bad) return 'blamed by several children'
  if (cand.host.isSeed && !cand.isSource && (cand.bitmap?.count ?? 0) === 0) return 'seed host without pieces'
  const slots = cand.host.uploadSlots
  if (!child.parents.has(cand) && cand.host.childCount >= slots) return `no free upload slot (${slots})`
  // levels are a topological order (resource/): a candidate not above the child cannot be its descendant
  if (cand.level > child.level && reaches(child, cand)) return 'would close a cycle'
  return null
}

/** children of `p` for its task (a host may feed other tasks too) */
function taskChildren (p: Peer): number { return p.children.size }

export function selectParents (child: Peer, log: Logger, limit = CANDIDATE_PARENT_LIMIT): Peer[] {
  const task = child.task
  const pieceCount = task.info?.pieceCount ?? 0
  const scored: Array<{ p: Peer, tier: number, children: number, distance: number, score: number }> = []
  const seeds: Array<{ p: Peer, tier: number, children: number, distance: number, score: number }> = []
  // join order: the task's peer map keeps insertion order, so peers met after the child joined after it
  let position = 0
  let seenChild = false
  for (const cand of task.peers.values()) {
    position++
    if (cand === child) { seenChild = true; continue }
    const reason = refuseReason(child, cand) ?? orderReason(cand, seenChild)
    if (reason != null) {
      if (cand !== child) log.debug('parent refused', { task: task.id.slice(0, 12), child: child.id, parent: cand.id, reason })
      continue
    }
    const slots = cand.host.uploadSlots
    const score = evaluate({
      parentPieces: cand.bitmap?.count ?? 0,
      pieceCount,
      parentFreeSlots: slots - cand.host.childCount,
      parentSlots: slots,
      parentLoad: cand.host.info.load,
      parentIdc: cand.host.info.idc,
      childIdc: child.host.info.idc,
      parentLocation: cand.host.info.location,
      childLocation: child.host.info.location
    })
    const complete = cand.state === 'succeeded' || (cand.bitmap?.full ?? false)
    const entry = {
      p: cand,
      tier: cand.host.isSeed ? 2 : complete ? 0 : 1,
      // a parent's current children, not counting this child
      children: taskChildren(cand) - (child.parents.has(cand) ? 1 : 0),
      // negative for peers that joined after the child (complete ones only): ranked after earlier peers
      distance: seenChild ? Number.MAX_SAFE_INTEGER - position : -position,
      score
    }
    if (cand.host.isSeed) seeds.push(entry)
    else scored.push(entry)
  }
  scored.sort((a, b) => a.tier - b.tier || a.children - b.children || a.distance - b.distance || b.score - a.score)
  const chosen = scored.slice(0, limit)
  // the seed: for its first SEED_CHILD_LIMIT children, and for any child with no other parent
  seeds.sort((a, b) => a.children - b.children || b.score - a.score)
  for (const s of seeds) {
    if (chosen.length === 0 || s.children < SEED_CHILD_LIMIT) {
      if (chosen.length >= limit) chosen.pop()
      chosen.unshift(s)
    }
  }
  return chosen.map(s => s.p)
}

/** A running peer that joined after the child would put the child upstream of it: refused. */
function orderReason (cand: Peer, joinedAfterChild: boolean): string | null {
  if (!joinedAfterChild || cand.host.isSeed || cand.isSource) return null
  if (cand.state === 'succeeded' || (cand.bitmap?.full ?? false)) return null
  return 'joined after the child'
}
