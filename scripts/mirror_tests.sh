#!/usr/bin/env bash
# Issue 19 item 7: make tests/ mirror the package. Run ONCE from a clean checkout (any
# directory inside it); it refuses a tree that is already mirrored or has changes in tests/.
#
#   copl_ray/<pkg>/<module>.py  ->  tests/<pkg>/test_<module>.py
#   copl_ray/<module>.py        ->  tests/test_<module>.py   (top level: already so)
#
# or a named end-to-end owner (test_pipeline_tiny.py, test_accuracy_tiny.py, test_http.py,
# ...). Where two files test one module the second keeps a suffix naming what it owns
# (test_adapt_sparse.py, test_layer_gate_input.py, test_metrics_gate_health.py,
# test_own_newcomer.py). tests/serve becomes tests/serving (the package's name).
#
# Same basenames now occur in two folders (graph/test_stage.py + eval/test_stage.py,
# graph/test_train.py + reward/test_train.py), which pytest's default import mode refuses
# for folders that are not packages: every test folder gets an empty __init__.py, so the
# modules are tests.graph.test_stage etc. (the repository root is on sys.path under
# `python -m pytest`, where `from tests.data.test_data_own import ...` already resolves),
# and the one bare sibling import (`from test_jobs_submit import ray_cluster`) gets its
# package prefix.
#
# Every reference to a moved file in tracked text files (README, docs, benchmarks, code
# comments, other tests) is rewritten in all spellings: tests/a/test_b.py, tests.a.test_b, and
# the bare test_b.py.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

if [ ! -d tests/serve ] || [ -d tests/serving ]; then
  echo "error: tests/serve missing or tests/serving present: the tree is already mirrored" >&2
  exit 1
fi
if [ -n "$(git status --porcelain -- tests)" ]; then
  echo "error: tests/ has uncommitted changes; commit or stash them first" >&2
  exit 1
fi

RENAMES=(
  # data: copl_ray/data/<module>.py
  "tests/data/test_data_builder_props.py tests/data/test_build.py"
  "tests/data/test_data_own.py tests/data/test_own.py"
  "tests/data/test_data_newcomer.py tests/data/test_own_newcomer.py"
  "tests/data/test_data_personalllm.py tests/data/test_personalllm.py"
  "tests/data/test_data_prism.py tests/data/test_prism.py"
  "tests/data/test_data_real_presets.py tests/data/test_presets.py"
  "tests/data/test_data_sampling.py tests/data/test_sampling.py"
  "tests/data/test_data_synthetic.py tests/data/test_synthetic.py"
  "tests/data/test_data_tldr.py tests/data/test_tldr.py"
  "tests/data/test_data_ufp.py tests/data/test_ufp.py"
  "tests/data/test_data_ukp.py tests/data/test_ukp.py"
  # eval
  "tests/eval/test_eval_accuracy.py tests/eval/test_accuracy_tiny.py"
  "tests/eval/test_eval_metrics.py tests/eval/test_metrics.py"
  "tests/eval/test_gate_health.py tests/eval/test_metrics_gate_health.py"
  "tests/eval/test_gnn_scorer.py tests/eval/test_stage.py"
  # graph
  "tests/graph/test_graph_accuracy.py tests/graph/test_accuracy.py"
  "tests/graph/test_graph_adapt.py tests/graph/test_adapt.py"
  "tests/graph/test_graph_adapt_sparse.py tests/graph/test_adapt_sparse.py"
  "tests/graph/test_graph_build.py tests/graph/test_bipartite.py"
  "tests/graph/test_graph_conv.py tests/graph/test_conv.py"
  "tests/graph/test_graph_spectral.py tests/graph/test_spectral.py"
  "tests/graph/test_graph_stage.py tests/graph/test_stage.py"
  "tests/graph/test_graph_train.py tests/graph/test_train.py"
  # mole
  "tests/mole/test_mole_layer.py tests/mole/test_layer.py"
  "tests/mole/test_gate_input.py tests/mole/test_layer_gate_input.py"
  # reward
  "tests/reward/test_backbone_pretrained.py tests/reward/test_backbone.py"
  "tests/reward/test_reward_cache.py tests/reward/test_frozen_cache.py"
  "tests/reward/test_reward_model.py tests/reward/test_model.py"
  "tests/reward/test_reward_model_export.py tests/reward/test_export.py"
  "tests/reward/test_reward_train_data.py tests/reward/test_shards.py"
  "tests/reward/test_reward_scoring_path.py tests/reward/test_model_scoring_path.py"
  "tests/reward/test_reward_train_dsconfig.py tests/reward/test_ds_config.py"
  "tests/reward/test_reward_train_loop.py tests/reward/test_train.py"
  # serve -> serving
  "tests/serve/test_serve_builder.py tests/serving/test_settings.py"
  "tests/serve/test_serve_http.py tests/serving/test_http.py"
  "tests/serve/test_serve_ingress.py tests/serving/test_ingress.py"
  "tests/serve/test_serve_ray_token.py tests/serving/test_ray_token.py"
  "tests/serve/test_serve_store.py tests/serving/test_store.py"
)

# Rewrite OLD -> NEW (literal, not followed by a word character: tests.reward.test_reward_model
# must not rewrite tests.reward.test_reward_model_export) in every tracked text file.
replace_all() {
  local old=$1 new=$2
  { git grep -lIF -e "$old" -- . ':!scripts/mirror_tests.sh' || true; } | while IFS= read -r f; do
    OLD="$old" NEW="$new" perl -pi -e \
      'BEGIN { $o = quotemeta $ENV{OLD}; $o .= "(?!\\w)" if $ENV{OLD} =~ /\w$/ } s/$o/$ENV{NEW}/g' "$f"
  done
}

mkdir -p tests/serving
for pair in "${RENAMES[@]}"; do
  read -r old new <<<"$pair"
  git mv "$old" "$new"
done
rmdir tests/serve 2>/dev/null || true

for d in tests tests/data tests/eval tests/graph tests/mole tests/reward tests/serving; do
  [ -e "$d/__init__.py" ] || { : >"$d/__init__.py"; git add "$d/__init__.py"; }
done

for pair in "${RENAMES[@]}"; do
  read -r old new <<<"$pair"
  replace_all "$old" "$new"                                 # tests/a/test_b.py
  old_mod=${old%.py} new_mod=${new%.py}
  replace_all "${old_mod//\//.}" "${new_mod//\//.}"         # tests.a.test_b
  replace_all "$(basename "$old")" "$(basename "$new")"     # test_b.py named alone
done
replace_all "tests/serve/" "tests/serving/"
replace_all "from test_jobs_submit import" "from tests.test_jobs_submit import"
# now a first-party import: its own block after the third-party ones (ruff's isort rule)
perl -0pi -e 's/\nfrom tests\.test_jobs_submit import/\n\nfrom tests.test_jobs_submit import/' \
  tests/test_operability.py

# Nothing should name an old file any more: list what still does (for a reader to fix).
left=0
for pair in "${RENAMES[@]}"; do
  read -r old _ <<<"$pair"
  base=$(basename "$old")
  if git grep -nIF -e "$base" -- . ':!scripts/mirror_tests.sh'; then left=1; fi
done
[ "$left" = 0 ] || echo "note: the lines above still name an old test file" >&2
git status --short
