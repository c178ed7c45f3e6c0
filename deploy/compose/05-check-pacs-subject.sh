#!/bin/sh
# Run by the nginx image's entrypoint (/docker-entrypoint.d/, before 20-envsubst fills the
# DICOM TLS sidecar's template): docker compose puts HOSPITAL_X_PACS_SUBJECT into nginx's
# configuration as text, so a subject holding a quote, a semicolon, a brace, a dollar or
# a backslash could change it (another certificate let in, another address). Exits
# non-zero, and the container with it, unless the subject is what
# ImagingCloud.DicomListeners accepts (imgcloud/config.py) and TLS_PEERS is its one map line.
# The subject itself is not printed.
set -eu
LC_ALL=C
export LC_ALL

refuse() {
    echo "$0: $1; nginx not started" >&2
    exit 1
}

subject="${PACS_SUBJECT-}"
[ -n "$subject" ] || refuse "PACS_SUBJECT is empty"
case "$subject" in
*[!A-Za-z0-9\ _.,=-]*)
    refuse "PACS_SUBJECT holds a character other than A-Z a-z 0-9 space _ . , = -"
    ;;
esac
# exactly the launcher's line (deploy/stack/services/dicom_tls.py peer_subject_line)
peers="$(printf '%s' "${TLS_PEERS-}")"
case "$peers" in
"\"~^\\Q${subject}\\E\\z\" 127."*";") ;;
*) refuse "TLS_PEERS is not the one map line of PACS_SUBJECT" ;;
esac
rest="${peers#"\"~^\\Q${subject}\\E\\z\" "}"
case "$rest" in
*[!0-9.\;]* | *";"?*) refuse "TLS_PEERS names no plain loopback address" ;;
esac
exit 0
