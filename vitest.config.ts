import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['packages/*/test/**/*.spec.ts', 'native/*/test/**/*.spec.ts', 'scheduler/test/**/*.spec.ts', 'seed-peer/test/**/*.spec.ts', 'test/**/*.spec.ts'],
    exclude: ['**/node_modules/**', '**/dist/**'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    allowOnly: false
  }
})
