import { strict as assert } from 'node:assert';
import { pausesOf } from '../bench/qemu-trace-pauses';

describe("bench's QEMU trace reader (qemu-trace-pauses.ts)", () => {
  it('one pause per running → other → running, its steps in ms from its start; lines outside a pause or not of the format ignored', () => {
    const text = [
      '7@100.000000:handle_qmp_command mon 0x1 req: {"execute": "query-status"}',
      '7@100.001000:runstate_set current_run_state 9 (running) new_state 4 (paused)',
      '7@100.001500:vm_stop_flush_all ret 0',
      '8@100.002000:handle_qmp_command mon 0x1 req: {"execute": "blockdev-snapshot", "arguments": {}}',
      '8@100.002100:monitor_qmp_respond mon 0x1 resp: {"return": {}, "id": "vn9"}',
      '9@100.003000:migrate_set_state new state setup',
      'garbage',
      '9@100.004000:runstate_set current_run_state 4 (paused) new_state 7 (finish-migrate)',
      '9@100.010000:migrate_set_state new state completed',
      '8@100.011000:handle_qmp_command mon 0x1 req: {"execute": "cont"}',
      '8@100.011200:monitor_qmp_respond mon 0x1 resp: {"error": {"class": "GenericError"}}',
      '7@100.013000:runstate_set current_run_state 7 (finish-migrate) new_state 9 (running)',
      '7@100.020000:handle_qmp_command mon 0x1 req: {"execute": "stop"}',
    ].join('\n');
    const ps = pausesOf('f.trace', text);
    assert.equal(ps.length, 1);
    const p = ps[0] as (typeof ps)[number];
    assert.equal(p.file, 'f.trace');
    assert.equal(Math.round(p.pauseMs * 1000), 12_000);
    assert.deepEqual(
      p.steps.map(([t, s]) => [Math.round(t * 1000) / 1000, s]),
      [
        [0.5, 'flush_all'],
        [1, 'cmd blockdev-snapshot'],
        [1.1, 'reply'],
        [2, 'mig setup'],
        [3, 'state finish-migrate'],
        [9, 'mig completed'],
        [10, 'cmd cont'],
        [10.2, 'reply (error)'],
      ],
    );
    assert.deepEqual(pausesOf('g', text.split('\n').slice(0, 6).join('\n')), [], 'a pause that never ended is not counted');
  });
});
