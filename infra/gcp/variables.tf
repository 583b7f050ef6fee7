variable "project" {
  description = "Google Cloud project id."
  type        = string
}

variable "region" {
  description = "Region of the bucket and the function (e.g. europe-west1)."
  type        = string
}

variable "name" {
  description = "Prefix of every resource name (function, service account, buckets)."
  type        = string
  default     = "obque"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.name))
    error_message = "name: 1-20 characters of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "bucket_name" {
  description = "Bucket holding the queue files (default: PROJECT-NAME-queues)."
  type        = string
  default     = null
}

variable "queues" {
  description = "Queue names: each is the object NAME.json in the bucket."
  type        = list(string)
  default     = ["queue"]

  validation {
    condition     = length(var.queues) > 0 && alltrue([for q in var.queues : can(regex("^[a-z0-9][a-z0-9._-]{0,62}$", q))])
    error_message = "queues: names of 1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit."
  }
}

variable "lease_seconds" {
  description = "Lease of a claim, written into queue files this module creates."
  type        = number
  default     = 30

  validation {
    condition     = var.lease_seconds >= 1 && var.lease_seconds <= 43200 && floor(var.lease_seconds) == var.lease_seconds
    error_message = "lease_seconds: a whole number from 1 to 43200."
  }
}

variable "max_attempts" {
  description = "Deliveries before a job is dead-lettered, written into new queue files."
  type        = number
  default     = 5

  validation {
    condition     = var.max_attempts >= 1 && var.max_attempts <= 1000 && floor(var.max_attempts) == var.max_attempts
    error_message = "max_attempts: a whole number from 1 to 1000."
  }
}

variable "invokers" {
  description = "Principals allowed to call the broker, e.g. [\"serviceAccount:worker@P.iam.gserviceaccount.com\", \"user:me@example.com\"]. Never public."
  type        = list(string)

  validation {
    condition     = alltrue([for m in var.invokers : !contains(["allUsers", "allAuthenticatedUsers"], m) && can(regex("^(user|serviceAccount|group|domain|principal|principalSet):", m))])
    error_message = "invokers: named principals only (user:, serviceAccount:, group:, domain:, principal:, principalSet:); allUsers and allAuthenticatedUsers are refused."
  }
}

variable "source_dir" {
  description = "The function's source: main.py, requirements.txt and the obque wheel, as written by `infra/build_bundle.py gcp` (default: REPO/.build/gcp-function)."
  type        = string
  default     = null
}

variable "max_instances" {
  description = "Most instances at once. Each keeps its own group-commit buffer, so fewer, busier instances commit more operations per write (GCS allows about one write per second per object)."
  type        = number
  default     = 3
}

variable "concurrency" {
  description = "Requests one instance serves at once (they share one group-commit engine)."
  type        = number
  default     = 80

  validation {
    condition     = var.concurrency > 1 && var.concurrency <= 1000
    error_message = "concurrency: more than 1 (group commit needs requests to meet), at most 1000."
  }
}

variable "memory" {
  description = "Memory of an instance."
  type        = string
  default     = "512Mi"
}

variable "cpu" {
  description = "vCPUs of an instance (concurrency > 1 needs at least 1)."
  type        = string
  default     = "1"
}

variable "timeout_seconds" {
  description = "Request timeout (claims long-poll for up to 20 s)."
  type        = number
  default     = 60
}

variable "ingress" {
  description = "Who can reach the URL at the network level (IAM still decides who may call it)."
  type        = string
  default     = "ALLOW_ALL"

  validation {
    condition     = contains(["ALLOW_ALL", "ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"], var.ingress)
    error_message = "ingress: ALLOW_ALL, ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB."
  }
}

variable "build_service_account" {
  description = "Service account Cloud Build uses to build the function (full resource name); null: the project's default."
  type        = string
  default     = null
}

variable "enable_apis" {
  description = "Enable the APIs the module needs (never disabled on destroy)."
  type        = bool
  default     = true
}
