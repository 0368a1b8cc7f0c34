"""Model loading (`--model` values) and the embedded Whisper recognizer.

Importing this package imports no model library: `options` builds command-line parsers, and
`loading` / `whisper` pull in CTranslate2 only when imported themselves.
"""
