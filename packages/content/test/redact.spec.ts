import { describe, it, expect } from 'vitest'
import { redactUrl } from '../src/index.js'

describe('redactUrl', () => {
  it('keeps scheme, host, path and parameter names; replaces query values and user info', () => {
    expect(redactUrl('https://h.example/a/b.bin')).toBe('https://h.example/a/b.bin')
    expect(redactUrl('https://h.example/f?token=secret&x=1#frag')).toBe('https://h.example/f?token=REDACTED&x=REDACTED')
    expect(redactUrl('https://user:pw@h.example/f')).toBe('https://REDACTED@h.example/f')
    const signed = redactUrl('https://b.s3.example/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc&X-Amz-Signature=def')
    expect(signed).not.toMatch(/AKIA|abc|def/)
    expect(signed).toContain('X-Amz-Signature=REDACTED')
    expect(redactUrl('not a url ?token=x')).toBe('<malformed URL>')
  })
})
