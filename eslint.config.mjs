// Lint: typescript-eslint's recommended rules, `.only` banned, no import cycles, and the
// dependency rule of DESIGN.md (switch never imports agent or coordinator; coordinator never
// imports switch or agent; proto imports nothing of ours; no product code imports test/). No
// filesystem, processes, sockets, CLI parsing or gRPC in the switch's dataplane: only its ports
// (switch/port/) and the standalone daemon (switch/cmd/) may import them.
import tseslint from 'typescript-eslint';
import importX from 'eslint-plugin-import-x';

const zone = (target, from, message) => ({ target, from, message });

export default tseslint.config(
  { ignores: ['dist/**', 'build/**', 'node_modules/**', 'proto/gen/**', '**/*.js', '**/*.mjs'] },
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    plugins: { 'import-x': importX },
    settings: { 'import-x/resolver': { node: { extensions: ['.ts', '.js'] } } },
    rules: {
      'import-x/no-cycle': 'error',
      'import-x/no-restricted-paths': [
        'error',
        {
          zones: [
            zone('./switch', './agent', 'switch/ must not import agent/'),
            zone('./switch', './coordinator', 'switch/ must not import coordinator/'),
            zone('./coordinator', './switch', 'coordinator/ must not import switch/'),
            zone('./coordinator', './agent', 'coordinator/ must not import agent/'),
            zone('./proto', './switch', 'proto/ imports nothing of ours'),
            zone('./proto', './agent', 'proto/ imports nothing of ours'),
            zone('./proto', './coordinator', 'proto/ imports nothing of ours'),
            zone('./agent', './coordinator', 'agent/ must not import coordinator/'),
            // test/ (test/sim/'s simulated driver included) is imported only by tests and benches.
            zone(['./proto', './switch', './agent', './coordinator'], './test', 'product code must not import test/ (test/sim/ is for tests and benches only)'),
          ],
        },
      ],
      'no-restricted-properties': [
        'error',
        { object: 'describe', property: 'only', message: '.only must not be committed' },
        { object: 'it', property: 'only', message: '.only must not be committed' },
        { object: 'context', property: 'only', message: '.only must not be committed' },
      ],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['switch/**/*.ts'],
    // switch/native-io.ts, the addon loader, is exempt by name: it needs node:path (and may
    // need node:fs) to locate the compiled .node file; it touches nothing else.
    ignores: ['switch/port/**', 'switch/cmd/**', 'switch/native-io.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: ['fs', 'fs/promises', 'child_process', 'net', 'commander'].map((name) => ({
            name,
            message: 'no filesystem, processes, sockets or CLI in the switch dataplane: only switch/port/ and switch/cmd/ may import this',
          })),
          patterns: [
            {
              regex: '^(node:(fs|fs/promises|child_process|net)$|@grpc/)',
              message: 'no filesystem, processes, sockets or gRPC in the switch dataplane: only switch/port/ and switch/cmd/ may import this',
            },
          ],
        },
      ],
    },
  },
);
