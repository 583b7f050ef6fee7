# The initial content of one queue file (format obque/1), with the broker record set.
# No provider and no resource, so it can be evaluated offline (tests/infra does).

variable "name" {
  type = string
}

variable "broker_url" {
  type = string
}

variable "broker_id" {
  type = string
}

variable "config" {
  description = "Queue settings to write; unnamed ones take obque's defaults when read."
  type        = map(number)
  default     = {}
}

output "content" {
  description = "queue.json as obque writes a freshly created queue (revision 1)."
  value = jsonencode({
    format   = "obque/1"
    name     = var.name
    revision = 1
    broker = {
      url          = var.broker_url
      mode         = "serverless"
      id           = var.broker_id
      epoch        = 1
      heartbeat_ms = 0
    }
    config   = var.config
    next_seq = 1
    jobs     = []
    dead     = []
    applied  = {}
    stats    = { commits = 1 }
  })
}
