pub struct Boot; pub struct BootOptions;
