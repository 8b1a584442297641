// The change to scheduler/src/scheduling/index.ts that bench/sim proposes (that file belongs to the
// scheduling work; `--proposed` runs the simulator against a copy of scheduler/dist whose
// scheduling/index.js is this file). Same filters, same ranking as the committed selectParents
// (join-order pipeline, complete peers first, fewest children, nearest first, seed for its first
// SEED_CHILD_LIMIT children); the one change is which candidates a decision looks at:
//   committed: every peer of the task (O(N) per decision: ~13 ms p50 at 10,000 peers);
//   proposed:  the child's current parents, the first FIRST_SCAN peers to join (the seeds), the
//              NEAR_BEFORE_SCAN peers that joined just before the child (the ranking prefers the nearest
//              earlier peers anyway) and NEAR_AFTER_SCAN just after it (complete peers that joined later),
//              read from resource/'s join-ordered PeerMap in O(limit).
// The cycle check keeps the committed levels test (a candidate not above the child cannot be its
// descendant); the walk for a candidate above the child only enters peers below the candidate's level
// and gives up (refuses) after MAX_CYCLE_WALK peers: in a chain the child's subtree is the whole chain.
import { evaluate } from '../evaluator/index.js'
import { CANDIDATE_PARENT_LIMIT, SEED_CHILD_LIMIT } from '../constants.js'

/** @default 8 */
export const FIRST_SCAN = 8
/** @default 192 */
export const NEAR_BEFORE_SCAN = 192
/** @default 64 */
export const NEAR_AFTER_SCAN = 64

export function reaches (from, target) {
  const seen = new Set()
  const stack = [from]
  while (stack.length > 0) {
    const p = stack.pop()
    if (p === target) return true
    if (seen.has(p)) continue
    seen.add(p)
    for (const c of p.children) stack.push(c)
  }
  return false
}

/** @default 64 */
export const MAX_CYCLE_WALK = 64

/** Could `target` be a descendant of `from`? Level-pruned, bounded walk; true past the bound. */
function mayReach (from, target) {
  const seen = new Set()
  const stack = [...from.children]
  while (stack.length > 0) {
    const p = stack.pop()
    if (p === target) return true
    if (p.level >= target.level || seen.has(p)) continue
    if (seen.size >= MAX_CYCLE_WALK) return true
    seen.add(p)
    for (const c of p.children) stack.push(c)
  }
  return false
}

export function refuseReason (child, cand) {
  if (cand === child) return 'self'
  if (cand.state === 'failed' || cand.state === 'left') return `state ${cand.state}`
  if (child.blamed.has(cand.id)) return 'blamed by child'
  if (cand.bad) return 'blamed by several children'
  if (cand.host.isSeed && !cand.isSource && (cand.bitmap?.count ?? 0) === 0) return 'seed host without pieces'
  const slots = cand.host.uploadSlots
  if (!child.parents.has(cand) && cand.host.childCount >= slots) return `no free upload slot (${slots})`
  if (cand.level > child.level && mayReach(child, cand)) return 'would close a cycle'
  return null
}

function * candidates (child) {
  const peers = child.task.peers
  yield * child.parents
  if (typeof peers.before !== 'function') { yield * peers.values(); return }
  yield * peers.first(FIRST_SCAN)
  yield * peers.before(child, NEAR_BEFORE_SCAN)
  yield * peers.after(child, NEAR_AFTER_SCAN)
}

export function selectParents (child, log, limit = CANDIDATE_PARENT_LIMIT) {
  const task = child.task
  const pieceCount = task.info?.pieceCount ?? 0
  const scored = []
  const seeds = []
  const childPos = task.peers.order(child)
  const seen = new Set()
  for (const cand of candidates(child)) {
    if (cand === child || seen.has(cand)) continue
    seen.add(cand)
    const position = task.peers.order(cand) + 1
    const seenChild = position - 1 > childPos
    const reason = refuseReason(child, cand) ?? orderReason(cand, seenChild)
    if (reason != null) {
      log.debug('parent refused', { task: task.id.slice(0, 12), child: child.id, parent: cand.id, reason })
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
      children: cand.children.size - (child.parents.has(cand) ? 1 : 0),
      distance: seenChild ? Number.MAX_SAFE_INTEGER - position : -position,
      score
    }
    if (cand.host.isSeed) seeds.push(entry)
    else scored.push(entry)
  }
  scored.sort((a, b) => a.tier - b.tier || a.children - b.children || a.distance - b.distance || b.score - a.score)
  const chosen = scored.slice(0, limit)
  seeds.sort((a, b) => a.children - b.children || b.score - a.score)
  for (const s of seeds) {
    if (chosen.length === 0 || s.children < SEED_CHILD_LIMIT) {
      if (chosen.length >= limit) chosen.pop()
      chosen.unshift(s)
    }
  }
  return chosen.map(s => s.p)
}

function orderReason (cand, joinedAfterChild) {
  if (!joinedAfterChild || cand.host.isSeed || cand.isSource) return null
  if (cand.state === 'succeeded' || (cand.bitmap?.full ?? false)) return null
  return 'joined after the child'
}
