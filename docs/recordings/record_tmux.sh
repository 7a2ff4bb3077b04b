#!/usr/bin/env bash
# Record a command as a user sees it on a real terminal: run it as the program of a detached tmux
# pane (160x48) and capture the pane every INTERVAL seconds, each frame headed by the seconds since
# the command started. Identical consecutive frames are written once. tmux's raw pipe-pane log (the
# bytes the terminal received, control codes included) goes to RAW_FILE.
#
# Usage: docs/recordings/record_tmux.sh FRAMES_FILE RAW_FILE 'command ...' [INTERVAL]
set -euo pipefail
frames=$1 raw=$2 command=$3 interval=${4:-2}
session=rec-$$
tmux() { command tmux -L "$session" "$@"; }  # a private server: its environment is this script's
: >"$frames"
: >"$raw"
start=$(date +%s.%N)
# The pane runs the command itself (no shell prompt), shows it first like a prompt would, and
# stays open until the last frame is taken.
tmux new-session -d -s "$session" -x 160 -y 48 \
  "printf '\$ %s\n' \"$command\"; $command; echo \"[exit \$?]\"; tmux wait-for -S $session-done; sleep 600"
tmux pipe-pane -t "$session" -o "cat >> '$raw'"
( tmux wait-for "$session-done"; touch "$frames.done" ) &
previous=""
while :; do
  finished=0
  [[ -e "$frames.done" ]] && finished=1
  frame=$(tmux capture-pane -p -t "$session" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}')
  if [[ -n "$frame" && "$frame" != "$previous" ]]; then
    printf '=== t=%6.1fs (%s UTC) ===\n%s\n' "$(echo "$(date +%s.%N) - $start" | bc)" "$(date -u +%H:%M:%S)" "$frame" >>"$frames"
    previous=$frame
  fi
  ((finished)) && break
  sleep "$interval"
done
rm -f "$frames.done"
tmux kill-session -t "$session"
