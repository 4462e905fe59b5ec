// Finding issues: rounds of searching until two rounds in a row find nothing new (at most 5).
export const meta = {
  name: "find-issues",
  description: "Looks for issues in rounds until two rounds in a row find nothing new, at most 5 rounds.",
  phases: ["search", "report"],
};

export default async function (args) {
  const target = String(args.target ?? args.code ?? "");
  if (!target) throw new Error("args.target is required");
  phase("search");
  const found = [];
  let dry = 0;
  let round = 0;
  while (dry < 2 && round < 5) {
    round++;
    const r = await agent(
      `Find issues round ${round}. Known issues so far:\n${found.join("\n") || "(none)"}\n\nList NEW issues in this target, one per line, or answer NONE.\n\n${target}`,
      { label: `round ${round}` }
    );
    const fresh = String(r.ok ? r.output : "")
      .split("\n")
      .map((s) => s.trim())
      .filter((s) => s && s.toUpperCase() !== "NONE" && !found.includes(s));
    log(`round ${round}: ${fresh.length} new`);
    if (fresh.length === 0) dry++;
    else {
      dry = 0;
      found.push(...fresh);
    }
  }
  phase("report");
  return { issues: found, rounds: round };
}
