import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['marble-tests/**/*.test.ts', 'test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration suites start servers and databases; two cores, so keep forks modest.
    pool: 'forks',
    maxWorkers: 2,
  },
});
