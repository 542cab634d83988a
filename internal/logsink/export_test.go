package logsink

// EncodeLogForTest exposes encodeLog to the external tests.
var EncodeLogForTest = encodeLog
