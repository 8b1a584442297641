/** `size` bytes no shifted copy of itself matches: `block` (1 MiB) repeated, every 4 KiB stamped with its own offset. */
export function stampedFrom (block, size) {
  const b = Buffer.allocUnsafe(size)
  for (let off = 0; off < size; off += block.length) block.copy(b, off, 0, Math.min(block.length, size - off))
  for (let off = 0; off + 8 <= size; off += 4096) b.writeDoubleLE(off, off)
  return b
}
