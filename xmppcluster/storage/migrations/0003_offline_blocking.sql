-- placeholder: replaced by the module that owns this migration
CREATE TABLE IF NOT EXISTS placeholder_0003 (x INTEGER);
