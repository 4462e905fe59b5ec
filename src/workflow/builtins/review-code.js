// Code review: correctness, security and performance reviews in parallel, then one synthesis.
export const meta = {
  name: "review-code",
  description: "Reviews code for correctness, security and performance in parallel, then synthesises one review.",
  phases: ["review", "synthesis"],
};

export default async function (args) {
  const code = String(args.code ?? args.diff ?? "");
  if (!code) throw new Error("args.code is required");
  phase("review");
  const aspects = ["correctness", "security", "performance"];
  const reviews = await parallel(
    aspects.map((a) => () =>
      agent(`Review the ${a} of this code. List concrete problems with line references.\n\n${code}`, {
        label: `${a} review`,
      })
    )
  );
  phase("synthesis");
  const text = reviews
    .map((r, i) => `## ${aspects[i]}\n${r.ok ? r.output : "(review failed: " + r.error + ")"}`)
    .join("\n\n");
  const summary = await agent(`Review synthesis: merge these reviews into one prioritised list.\n\n${text}`, {
    label: "synthesis",
  });
  return { review: summary.output, aspects: reviews.map((r, i) => ({ aspect: aspects[i], ok: r.ok })) };
}
