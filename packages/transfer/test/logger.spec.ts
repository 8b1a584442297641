import { describe, it, expect } from 'vitest'
import { jsonLogger } from '../src/logger.js'

describe('jsonLogger', () => {
  it('writes url fields redacted and never headers', () => {
    const lines: string[] = []
    const log = jsonLogger('debug', { url: 'http://h/f?token=base-secret' }, l => { lines.push(l) })
    log.info('seeding', { url: 'http://h/f?token=s3cret', headers: { authorization: 'Bearer s3cret' }, task: 'ab' })
    log.child({ authorization: 'Bearer s3cret' }).warn('x', { cookie: 'id=s3cret' })
    const text = lines.join('')
    expect(text).not.toMatch(/s3cret|base-secret/)
    const first = JSON.parse(lines[0]!)
    expect(first).toMatchObject({ msg: 'seeding', url: 'http://h/f?token=REDACTED', headers: '[redacted]', task: 'ab' })
  })
})
