package chaos

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Summary is the report on one line.
func (r *Report) Summary() string {
	verdict := "PASS"
	if !r.Pass() {
		verdict = fmt.Sprintf("FAIL (%d violations)", len(r.Violations))
	}
	return fmt.Sprintf("%s: %d messages sent, %d acknowledged, %d refused, %d in doubt; %d deliveries checked, %d received, %d QoS 1 duplicates, %d QoS 2 again after a lost session, %d stranded, %s",
		verdict, r.Messages, r.Acked, r.Refused, r.InDoubt, r.Checked, r.Deliveries, r.Duplicates, r.Unreleased, r.Stranded, r.reorderSummary())
}

func (r *Report) reorderSummary() string {
	if len(r.Reordered) == 0 {
		return "no reordering"
	}
	var parts []string
	for k, v := range r.Reordered {
		parts = append(parts, fmt.Sprintf("%d reordered (%s)", v, k))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// violationsShown bounds the violations of one guarantee printed in full.
const violationsShown = 3

// Print writes the result for a person: the verdict, the figures, and
// for a failure the seed to replay it and each violation with the
// operations around it.
func (res *Result) Print(w io.Writer) {
	verdict := "PASS"
	if !res.Pass() {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "chaos %s seed=%d: %s after %v (faults for %v: %s; node crashes: %d)\n",
		res.Scenario, res.Seed, verdict, res.Took.Round(time.Second), res.Duration.Round(time.Second), faultSummary(res.Faults), res.Crashes)
	for _, s := range res.Skipped {
		fmt.Fprintf(w, "  %s\n", s)
	}
	if res.Err != "" {
		fmt.Fprintf(w, "  the run could not finish: %s\n", res.Err)
	}
	if res.Report != nil {
		fmt.Fprintf(w, "  %s\n", res.Report.Summary())
		if n := res.Report.RefusedDelivered; n > 0 {
			fmt.Fprintf(w, "  %d refused messages were delivered all the same\n", n)
		}
		if !res.Report.Pass() {
			fmt.Fprintf(w, "  broken: %s\n", res.Report.brokenGuarantees())
		}
		shown := map[string]int{}
		for _, v := range res.Report.Violations {
			shown[v.Guarantee]++
			if shown[v.Guarantee] > violationsShown {
				continue
			}
			fmt.Fprintf(w, "  VIOLATION [%s] %s\n", v.Guarantee, v.What)
			for _, o := range v.Around {
				fmt.Fprintf(w, "      %s\n", o)
			}
		}
		for g, n := range shown {
			if n > violationsShown {
				fmt.Fprintf(w, "  ... and %d more [%s] violations\n", n-violationsShown, g)
			}
		}
	}
	if !res.Pass() && res.Scenario == ScenarioRolling {
		fmt.Fprintf(w, "  replay: gannet-bench chaos -scenario rolling -seed %d\n", res.Seed)
	} else if !res.Pass() {
		fmt.Fprintf(w, "  replay: gannet-bench chaos -seed %d -duration %v -faults %s\n", res.Seed, res.Duration.Round(time.Second), strings.Join(res.Kinds, ","))
	}
	if res.Dir != "" {
		fmt.Fprintf(w, "  logs and history: %s\n", res.Dir)
	}
}

// Table writes one Markdown row per result, under a header.
func Table(w io.Writer, results []*Result) {
	fmt.Fprintln(w, "| scenario | seed | duration | faults | node crashes | messages acked | deliveries checked | stranded | result |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		acked, checked, stranded, verdict := 0, 0, 0, "PASS"
		if r.Report != nil {
			acked, checked, stranded = r.Report.Acked, r.Report.Checked, r.Report.Stranded
			if !r.Report.Pass() {
				verdict = fmt.Sprintf("FAIL: %d violations (%s)", len(r.Report.Violations), r.Report.brokenGuarantees())
			}
		}
		if r.Err != "" {
			verdict = "unfinished: " + r.Err
		}
		fmt.Fprintf(w, "| %s | %d | %v | %s | %d | %d | %d | %d | %s |\n", r.Scenario, r.Seed, r.Duration.Round(time.Second),
			faultSummary(r.Faults), r.Crashes, acked, checked, stranded, verdict)
	}
}

// brokenGuarantees lists the guarantees violated, with counts.
func (r *Report) brokenGuarantees() string {
	n := map[string]int{}
	for _, v := range r.Violations {
		n[v.Guarantee]++
	}
	var parts []string
	for g, k := range n {
		parts = append(parts, fmt.Sprintf("%s: %d", g, k))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
