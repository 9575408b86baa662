/** The agent version; kept in step with package.json (checked by test/cli.test.ts). */
export const VERSION = "0.1.0"
