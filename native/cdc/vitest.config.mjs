// Lets `cd native/mount && vitest run` work before the root vitest config includes native/*/test.
export default { test: { include: ['test/**/*.spec.ts'], exclude: ['**/node_modules/**', '**/dist/**'], testTimeout: 120_000 } }
