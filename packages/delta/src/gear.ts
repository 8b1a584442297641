/**
 * The gear table of FastCDC v1 in this format: 256 32-bit values, value i = the first four bytes (big endian)
 * of sha256("guoce-gear-v1:" + i). Part of the format: an index made with another table describes other
 * cut points, so changing it needs a new algorithm number (doc/FORMAT.md).
 */
import { createHash } from 'node:crypto'

function makeGear (): Int32Array {
  const g = new Int32Array(256)
  for (let i = 0; i < 256; i++) g[i] = createHash('sha256').update(`guoce-gear-v1:${i}`).digest().readInt32BE(0)
  return g
}

export const GEAR: Int32Array = makeGear()
