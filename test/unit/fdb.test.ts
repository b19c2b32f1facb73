import { strict as assert } from 'node:assert';
import { Fdb } from '../../switch/bridge/fdb';

describe('fdb (MAC learning table)', () => {
  it('learns, looks up and moves an entry', () => {
    const f = new Fdb();
    f.learn(0xa, 1, 0);
    assert.equal(f.lookup(0xa)?.owner, 1);
    f.learn(0xa, 2, 1);
    assert.equal(f.lookup(0xa)?.owner, 2);
    assert.deepEqual(f.counters, { learned: 1, moved: 1, aged: 0, evicted: 0 });
    assert.equal(f.countOf(1), 0);
    assert.equal(f.countOf(2), 1);
  });

  it('ages entries by an incremental scan, a bounded number per call', () => {
    const f = new Fdb({ agingTicks: 10, scanPerCall: 3 });
    for (let i = 0; i < 7; i++) f.learn(100 + i, 1, 0);
    f.learn(200, 1, 8);
    assert.equal(f.age(5), 0); // nothing old enough yet (scans 3)
    assert.equal(f.age(12), 3); // the scan resumes where it stopped: entries 103..105
    assert.equal(f.size, 5);
    assert.equal(f.age(12), 1); // 106 aged, 200 is fresh, end of table
    assert.equal(f.age(12), 3); // wraps around: 100..102
    assert.deepEqual(f.entries().map((e) => e.mac), [200]);
    assert.equal(f.counters.aged, 7);
  });

  it('refreshing an entry keeps it from aging', () => {
    const f = new Fdb({ agingTicks: 10, scanPerCall: 100 });
    f.learn(1, 1, 0);
    f.learn(1, 1, 9);
    assert.equal(f.age(15), 0);
    assert.equal(f.age(19), 1);
  });

  it('caps its size by evicting from the owner with the most entries (MAC flood defence)', () => {
    const f = new Fdb({ maxEntries: 10 });
    f.learn(1, 7, 0);
    f.learn(2, 8, 0);
    for (let i = 0; i < 100; i++) f.learn(1000 + i, 9, 0); // port 9 floods
    assert.equal(f.size, 10);
    assert.equal(f.lookup(1)?.owner, 7);
    assert.equal(f.lookup(2)?.owner, 8);
    assert.equal(f.countOf(9), 8);
    assert.equal(f.counters.evicted, 92);
    // The flooder keeps its newest entries.
    assert.equal(f.lookup(1099)?.owner, 9);
    assert.equal(f.lookup(1000), undefined);
  });

  it('static entries are never aged, evicted or moved by learning', () => {
    const f = new Fdb({ maxEntries: 3, agingTicks: 1, scanPerCall: 10 });
    f.setStatic(5, -1);
    f.learn(5, 3, 0);
    assert.equal(f.lookup(5)?.owner, -1);
    for (let i = 0; i < 10; i++) f.learn(100 + i, 3, 0);
    f.age(1000);
    assert.equal(f.lookup(5)?.owner, -1);
    assert.equal(f.lookup(5)?.isStatic, true);
  });

  it('flushes a departed port, keeping its static entries unless asked', () => {
    const f = new Fdb();
    f.learn(1, 4, 0);
    f.learn(2, 4, 0);
    f.learn(3, 5, 0);
    f.setStatic(9, 4);
    assert.equal(f.flushOwner(4), 2);
    assert.deepEqual(f.entries().map((e) => e.mac).sort(), [3, 9]);
    assert.equal(f.flushOwner(4, true), 1);
    assert.deepEqual(f.entries().map((e) => e.mac), [3]);
  });
});
