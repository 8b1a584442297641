// The change to scheduler/src/scheduling/index.ts that bench/sim proposes (owned by the scheduling
// work; measured here with `--proposed`, which runs the simulator against a copy of scheduler/dist
// whose scheduling/index.js is this file). Two changes, same filters and scores:
//  1. the cycle check uses Peer.level (resource/: a topological order kept on every edge insert):
//     a candidate at a level <= the child's cannot be its descendant, so no walk; otherwise the walk
//     from the child only enters peers below the candidate's level (was a full walk per candidate);
//  2. a decision looks at the child's current parents, the seeding host, and a rotating window of
//     MAX_CANDIDATE_SCAN other peers (Task.peers.window), not at every peer of a 10,000-peer task.
import { evaluate } from '../evaluator/index.js'
import { CANDIDATE_PARENT_LIMIT } from '../constants.js'

/** Candidates scored per decision besides current parents and the seed. */
export const MAX_CANDIDATE_SCAN = 256

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

/** Walk budget of the cycle check; past it the candidate is refused (it would deepen the DAG anyway). */
export const MAX_CYCLE_WALK = 64

/**
 * Could `target` be a descendant of `from`? Only peers at a lower level than target can lead to it.
 * Answers true (refuse) when the walk exceeds MAX_CYCLE_WALK peers.
 */
function below (from, target) {
  if (target.level <= from.level || from.children.size === 0) return false
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

function refuse (child, cand) {
  if (cand === child) return 'self'
  if (cand.state === 'failed' || cand.state === 'left') return `state ${cand.state}`
  if (child.blamed.has(cand.id)) return 'blamed by child'
  if (cand.bad) return 'blamed by several children'
  if (cand.host.isSeed && !cand.isSource && (cand.bitmap?.count ?? 0) === 0) return 'seed host without pieces'
  const slots = cand.host.uploadSlots
  if (!child.parents.has(cand) && cand.host.childCount >= slots) return `no free upload slot (${slots})`
  if (child.level !== undefined ? below(child, cand) : reaches(child, cand)) return 'would close a cycle'
  return null
}

export function refuseReason (child, cand) { return refuse(child, cand) }

export function selectParents (child, log, limit = CANDIDATE_PARENT_LIMIT) {
  const task = child.task
  const pieceCount = task.info?.pieceCount ?? 0
  const scored = []
  const seen = new Set()
  const consider = (cand) => {
    if (cand == null || seen.has(cand)) return
    seen.add(cand)
    const reason = refuse(child, cand)
    if (reason != null) {
      if (cand !== child) log.debug('parent refused', { task: task.id.slice(0, 12), child: child.id, parent: cand.id, reason })
      return
    }
    const slots = cand.host.uploadSlots
    let score = evaluate({
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
    if (cand.state === 'succeeded' || cand.isSource) score += 0.01
    scored.push({ p: cand, score })
  }
  for (const p of child.parents) consider(p)
  if (task.seeding != null) consider(task.peers.get(task.seeding))
  const win = typeof task.peers.window === 'function' ? task.peers.window(MAX_CANDIDATE_SCAN) : task.peers.values()
  for (const cand of win) consider(cand)
  scored.sort((a, b) => b.score - a.score)
  return scored.slice(0, limit).map(s => s.p)
}
