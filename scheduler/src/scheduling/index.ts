/**
 * Parent selection: filters (each refusal is logged with its reason), a cycle check over the
 * parent/child DAG, the evaluator's score, then the top CANDIDATE_PARENT_LIMIT.
 */
import type { Logger } from '@guoce/interface'
import { evaluate } from '../evaluator/index.js'
import { CANDIDATE_PARENT_LIMIT } from '../constants.js'
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
  if (reaches(child, cand)) return 'would close a cycle'
  return null
}

export function selectParents (child: Peer, log: Logger, limit = CANDIDATE_PARENT_LIMIT): Peer[] {
  const task = child.task
  const pieceCount = task.info?.pieceCount ?? 0
  const scored: Array<{ p: Peer, score: number }> = []
  for (const cand of task.peers.values()) {
    const reason = refuseReason(child, cand)
    if (reason != null) {
      if (cand !== child) log.debug('parent refused', { task: task.id.slice(0, 12), child: child.id, parent: cand.id, reason })
      continue
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
    // a parent that has nothing the child lacks, and will get nothing more, is useless
    if (cand.state === 'succeeded' || cand.isSource) score += 0.01
    scored.push({ p: cand, score })
  }
  scored.sort((a, b) => b.score - a.score)
  return scored.slice(0, limit).map(s => s.p)
}
