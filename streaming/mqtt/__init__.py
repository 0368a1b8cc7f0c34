"""The MQTT bridge: call-center audio taps in, protocol events out (see docs/mqtt.md)."""
