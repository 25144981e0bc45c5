// Stats: how sessions turn into merged pull requests, usage over the last 30 days, who
// is prompting right now, how much of the merged code the agent wrote, per-repository
// figures, and the warm pool.

import { useEffect, useState } from "preact/hooks";
import { client, type PoolView, type StatsFigures, type StatsView, type UsageDay } from "../api";
import { duration, percent } from "../format";

function Figure({ label, value, testid, hint }: { label: string; value: string | number; testid?: string; hint?: string }) {
  return (
    <div class="figure" data-testid={testid}>
      <span class="value">{value}</span>
      <span class="label">{label}</span>
      {hint && <span class="hint">{hint}</span>}
    </div>
  );
}

const day = (ms: number) => new Date(ms).toISOString().slice(5, 10);

/** Sessions per day as bars, with the pull requests merged that day. */
function UsageChart({ days }: { days: UsageDay[] }) {
  const max = Math.max(1, ...days.map((d) => Math.max(d.sessions, d.prs_merged)));
  return (
    <div class="chart" data-testid="usage-chart" role="img" aria-label="sessions and merged pull requests per day">
      {days.map((d) => (
        <div class="bar" title={`${day(d.day_ms)}: ${d.sessions} sessions, ${d.prs_opened} PRs opened, ${d.prs_merged} merged`}>
          <span class="sessions" style={{ height: `${(d.sessions / max) * 100}%` }} />
          <span class="merged" style={{ height: `${(d.prs_merged / max) * 100}%` }} />
        </div>
      ))}
    </div>
  );
}

function ttm(f: StatsFigures): string {
  return f.median_time_to_merge_secs === null ? "–" : duration(f.median_time_to_merge_secs * 1000);
}

export function Stats({ token }: { token: string }) {
  const [stats, setStats] = useState<StatsView | null>(null);
  const [pool, setPool] = useState<PoolView | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let live = true;
    const load = async () => {
      const c = client(token);
      try {
        const [s, p] = await Promise.all([c.stats(), c.pool()]);
        if (!live) return;
        setStats(s);
        setPool(p);
        setError(null);
      } catch (e) {
        if (live) setError((e as Error).message);
      }
    };
    void load();
    const timer = setInterval(load, 10_000);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, [token]);

  const u = stats?.usage;
  const o = stats?.overall;
  const claims = pool ? pool.hits + pool.misses : 0;
  return (
    <main class="page">
      <h1>Stats</h1>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {!stats && !error && <p class="hint">Loading…</p>}
      {stats && u && o && (
        <>
          <section class="card">
            <h2>From sessions to merged pull requests</h2>
            <div class="figures funnel">
              <Figure label="sessions" value={u.sessions} testid="stat-sessions" />
              <span class="arrow">→</span>
              <Figure label="opened a PR" value={u.sessions_with_pr} testid="stat-with-pr" />
              <span class="arrow">→</span>
              <Figure label="merged" value={u.sessions_merged} testid="stat-merged" />
            </div>
          </section>
          <div class="figures">
            <Figure
              label="people prompting in the last 5 minutes"
              value={stats.prompting_now.length}
              testid="stat-prompting"
              hint={stats.prompting_now.join(", ")}
            />
            <Figure
              label="of merged code written by the agent"
              value={percent(o.agent_code_share)}
              testid="stat-agent-share"
              hint={o.agent_code_share === null ? "known once a PR with line counts merges" : undefined}
            />
            <Figure label="median time to merge" value={ttm(o)} />
            <Figure label="of reviewed PRs approved" value={percent(o.approval_rate)} />
          </div>
          <section class="card">
            <h2>Usage, last {u.days.length} days</h2>
            <UsageChart days={u.days} />
            <p class="hint legend">
              <span class="swatch sessions" /> sessions started <span class="swatch merged" /> pull requests merged ·{" "}
              {u.days.reduce((n, d) => n + d.sessions, 0)} sessions, {u.days.reduce((n, d) => n + d.prs_opened, 0)} PRs opened,{" "}
              {u.days.reduce((n, d) => n + d.prs_merged, 0)} merged
            </p>
          </section>
          <section class="card">
            <h2>Pull requests by repository</h2>
            <div class="table-scroll">
              <table data-testid="stats-repos">
                <thead>
                  <tr>
                    <th>Repository</th>
                    <th>Opened</th>
                    <th>Merged</th>
                    <th>Closed</th>
                    <th>Time to merge</th>
                    <th>Agent share</th>
                    <th>Revisions</th>
                  </tr>
                </thead>
                <tbody>
                  {[["all", o] as const, ...Object.entries(stats.repos)].map(([repo, f]) => (
                    <tr>
                      <td>{repo}</td>
                      <td>{f.prs_opened}</td>
                      <td>{f.prs_merged}</td>
                      <td>{f.prs_closed_unmerged}</td>
                      <td>{ttm(f)}</td>
                      <td>{percent(f.agent_code_share)}</td>
                      <td>{f.revisions}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </section>
        </>
      )}
      {pool && (
        <section class="card" data-testid="pool">
          <h2>Warm pool</h2>
          <div class="figures">
            <Figure label="claims from a warm sandbox" value={pool.hits} testid="pool-hits" />
            <Figure label="claims that started one" value={pool.misses} />
            <Figure label="hit rate" value={claims ? percent(pool.hits / claims) : "–"} />
            <Figure label="mean claim" value={claims ? duration(pool.mean_claim_ms) : "–"} />
            <Figure label="drafts holding a sandbox" value={pool.reservations} />
          </div>
          {pool.idle.length > 0 && (
            <p class="meta">
              Idle: {pool.idle.map((r) => `${r.repo} ${r.idle}`).join(" · ")}
            </p>
          )}
        </section>
      )}
    </main>
  );
}
