#!/bin/sh
# Speak a long text as a job: submit it, poll it until it ends, download its audio.
#
#   IDLAKD_KEY=idk_... docs/examples/job.sh chapter.txt [voice_id] [audio_format]
#
# IDLAKD_URL (default http://localhost:8080), IDLAKD_KEY (an API key or access token),
# OUT (default job.<format>), POLL_SECONDS (default 2). Needs curl and python3 (to put the
# text into JSON).
set -eu
url=${IDLAKD_URL:-http://localhost:8080}
key=${IDLAKD_KEY:?set IDLAKD_KEY to an API key or an access token}
file=${1:?usage: job.sh TEXT_FILE [VOICE_ID] [AUDIO_FORMAT]}
voice=${2:-alba}
format=${3:-mp3}
out=${OUT:-job.$format}
auth="Authorization: Bearer $key"

# 1. Submit: 202 {"id", "status_url"}.
answer=$(python3 -c 'import json, sys
print(json.dumps({"voice_id": sys.argv[1], "audio_format": sys.argv[2],
                  "text": open(sys.argv[3], encoding="utf-8").read()}))' "$voice" "$format" "$file" |
         curl -fsS -H "$auth" -H "Content-Type: application/json" --data-binary @- "$url/v1/jobs")
status_url=$(printf '%s' "$answer" | sed -n 's/.*"status_url":"\([^"]*\)".*/\1/p')
echo "queued: $status_url" >&2

# 2. Poll until done (or failed, or cancelled).
while :; do
    job=$(curl -fsS -H "$auth" "$url$status_url")
    status=$(printf '%s' "$job" | sed -n 's/.*"status":"\([a-z]*\)".*/\1/p')
    done_chars=$(printf '%s' "$job" | sed -n 's/.*"characters_done":\([0-9]*\).*/\1/p')
    total=$(printf '%s' "$job" | sed -n 's/.*"characters_total":\([0-9]*\).*/\1/p')
    echo "$status: $done_chars of $total characters" >&2
    case $status in
        done) break ;;
        failed|cancelled) echo "$job" >&2; exit 1 ;;
    esac
    sleep "${POLL_SECONDS:-2}"
done

# 3. Download (curl -C - resumes an interrupted download with a Range request).
curl -fsS -H "$auth" -o "$out" "$url$status_url/audio"
echo "saved $out" >&2
