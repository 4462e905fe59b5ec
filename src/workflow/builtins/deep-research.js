// Deep research: scope the question, search and fetch in parallel, verify, then synthesise.
export const meta = {
  name: "deep-research",
  description: "Scopes a question, runs parallel searches and fetches, verifies the findings, then writes a synthesis.",
  phases: ["scope", "search", "verify", "synthesis"],
};

export default async function (args) {
  const question = String(args.question ?? args.topic ?? "");
  if (!question) throw new Error("args.question is required");
  phase("scope");
  const scope = await agent(
    `Research scope: list up to 4 focused sub-questions, one per line, for: ${question}`,
    { label: "scope" }
  );
  const subs = String(scope.output ?? "")
    .split("\n")
    .map((s) => s.replace(/^[-*\d.\s]+/, "").trim())
    .filter(Boolean)
    .slice(0, 4);
  if (subs.length === 0) subs.push(question);
  phase("search");
  const found = await parallel(
    subs.map((q, i) => () =>
      agent(`Research search ${i + 1}: find and fetch sources, then summarise what they say about: ${q}`, {
        label: `search ${i + 1}`,
        tools: ["http_fetch"],
      })
    )
  );
  const notes = found.filter((r) => r.ok).map((r) => r.output);
  log(`${notes.length} of ${subs.length} searches answered`);
  phase("verify");
  const verified = await agent(
    `Research verification: check these findings against each other and flag anything unsupported:\n${notes.join("\n---\n")}`,
    { label: "verify" }
  );
  phase("synthesis");
  const report = await agent(
    `Research synthesis: answer "${question}" from these verified notes:\n${verified.output}`,
    { label: "synthesis" }
  );
  return { question, report: report.output, sources: notes.length };
}
