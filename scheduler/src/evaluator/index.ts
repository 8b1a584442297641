/**
 * Pure scoring of a candidate parent for a child (Dragonfly's evaluator, in spirit).
 * Every weight is a named constant; the score is in [0, 1].
 */
export const WEIGHT_PIECES = 0.35
export const WEIGHT_FREE_UPLOAD = 0.3
export const WEIGHT_HOST_LOAD = 0.1
export const WEIGHT_IDC = 0.15
export const WEIGHT_LOCATION = 0.1
/** Location labels compared: "region|zone|rack|..." */
export const MAX_LOCATION_ELEMENTS = 5

export interface EvalInput {
  parentPieces: number
  pieceCount: number
  parentFreeSlots: number
  parentSlots: number
  parentLoad: number
  parentIdc: string
  childIdc: string
  /** a location label, or its elements already split (Host.location caches them) */
  parentLocation: string | readonly string[]
  childLocation: string | readonly string[]
}

/** The elements of a location label, at most MAX_LOCATION_ELEMENTS. */
export function locationElements (label: string): readonly string[] {
  return label === '' ? [] : label.split('|', MAX_LOCATION_ELEMENTS)
}

export function locationAffinity (a: string | readonly string[], b: string | readonly string[]): number {
  const x = typeof a === 'string' ? locationElements(a) : a
  const y = typeof b === 'string' ? locationElements(b) : b
  if (x.length === 0 || y.length === 0) return 0
  let common = 0
  for (let i = 0; i < Math.min(x.length, y.length, MAX_LOCATION_ELEMENTS); i++) {
    if (x[i] !== y[i]) break
    common++
  }
  return common / MAX_LOCATION_ELEMENTS
}

export function evaluate (e: EvalInput): number {
  const pieces = e.pieceCount > 0 ? Math.min(1, e.parentPieces / e.pieceCount) : 0
  const free = e.parentSlots > 0 ? Math.max(0, e.parentFreeSlots) / e.parentSlots : 0
  const load = 1 - Math.min(1, Math.max(0, e.parentLoad))
  const idc = e.parentIdc !== '' && e.parentIdc === e.childIdc ? 1 : 0
  return WEIGHT_PIECES * pieces + WEIGHT_FREE_UPLOAD * free + WEIGHT_HOST_LOAD * load +
    WEIGHT_IDC * idc + WEIGHT_LOCATION * locationAffinity(e.parentLocation, e.childLocation)
}
